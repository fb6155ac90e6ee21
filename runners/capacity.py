"""What an agent has: CPUs, memory and NVIDIA GPUs, detected, then overridden by declared values.

GPU detection goes through NVML (``nvidia-ml-py``, imported as ``pynvml``). ``gpus_from_nvml`` takes
an NVML-like module so that the GPU path can be tested with a fake one; wherever NVML is missing or
fails (no driver, no library, a container without devices) the answer is "no GPUs", never an error.
Everything here blocks briefly (sysfs reads, NVML calls): call ``detect_capacity`` from a thread.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import psutil
import structlog

from runners.protocol import Capacity, Gpu

log = structlog.get_logger(__name__)

DECLARED_GPU_NAME = "declared"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def gpus_from_nvml(nvml: Any) -> list[Gpu]:
    """The GPUs an NVML-like module reports (``nvmlInit``, ``nvmlDeviceGetCount``,
    ``nvmlDeviceGetHandleByIndex``, ``nvmlDeviceGetName``, ``nvmlDeviceGetMemoryInfo``,
    ``nvmlShutdown``). Raises whatever the module raises; ``detect_gpus`` turns that into no GPUs."""
    nvml.nvmlInit()
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):  # older bindings return bytes
                name = name.decode("utf-8", "replace")
            memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
            gpus.append(Gpu(index=index, name=str(name), memory=memory))
        return gpus
    finally:
        nvml.nvmlShutdown()


def load_nvml() -> ModuleType | None:
    """The ``pynvml`` module, or None where the package is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def detect_gpus(nvml: Any | None = None) -> list[Gpu]:
    """NVIDIA GPUs through ``nvml`` (default: ``pynvml``); no GPUs where NVML is absent or fails."""
    if nvml is None:
        nvml = load_nvml()
        if nvml is None:
            return []
    try:
        return gpus_from_nvml(nvml)
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ... all mean "none here"
        log.info("nvml_unavailable", error=str(exc) or type(exc).__name__)
        return []


def detect_cpus(cgroup_root: Path = CGROUP_ROOT) -> float:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 ``cpu.max`` quota."""
    cores = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else psutil.cpu_count())
    quota = _read_cgroup(cgroup_root / "cpu.max")
    if quota:
        limit, _, period = quota.partition(" ")
        if limit != "max" and period.isdigit() and limit.isdigit() and int(period) > 0:
            cores = min(cores, int(limit) / int(period))
    return cores


def detect_memory(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Bytes of memory: the machine's total, capped by a cgroup v2 ``memory.max`` limit."""
    memory = int(psutil.virtual_memory().total)
    limit = _read_cgroup(cgroup_root / "memory.max")
    if limit and limit.isdigit():
        memory = min(memory, int(limit))
    return memory


def _read_cgroup(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def declared_gpus(detected: list[Gpu], declared: int | Literal["auto"]) -> list[Gpu]:
    """``auto``: what was detected. A number N: the first N detected GPUs, completed where fewer were
    detected by GPUs named ``declared`` with unknown (0) memory, so that ``--gpus 2`` works on a
    machine where NVML cannot see its devices."""
    if declared == "auto":
        return list(detected)
    gpus = list(detected[:declared])
    gpus.extend(Gpu(index=index, name=DECLARED_GPU_NAME, memory=0) for index in range(len(gpus), declared))
    return gpus


def detect_capacity(
    *,
    cpus: float | None = None,
    memory: int | None = None,
    gpus: int | Literal["auto"] = "auto",
    nvml: Any | None = None,
    cgroup_root: Path = CGROUP_ROOT,
) -> Capacity:
    """The agent's capacity: declared values where given, detected ones otherwise. With ``gpus`` 0,
    NVML is not even asked."""
    detected = detect_gpus(nvml) if gpus != 0 else []
    return Capacity(
        cpu=cpus if cpus is not None else detect_cpus(cgroup_root),
        memory=memory if memory is not None else detect_memory(cgroup_root),
        gpus=declared_gpus(detected, gpus),
    )
