"""Capacity detection through the NVML seam, declared overrides, option parsing, and the agent's
ledger of what it has promised."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from kit.subjects import check_agent_name
from kit.units import parse_size
from runners import options
from runners.capacity import declared_gpus, detect_capacity, detect_cpus, detect_gpus, detect_memory
from runners.ledger import Ledger, NoRoom
from runners.protocol import Capacity, Gpu, Resources

GiB = 1024**3


class FakeNvml:
    """The few NVML calls capacity detection makes, over a list of (name, memory) devices."""

    def __init__(self, devices: list[tuple[str | bytes, int]], fail_init: Exception | None = None) -> None:
        self.devices = devices
        self.fail_init = fail_init
        self.shut_down = False

    def nvmlInit(self) -> None:
        if self.fail_init is not None:
            raise self.fail_init

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return self.devices[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=self.devices[handle][1], free=0, used=0)


def test_gpus_come_from_nvml_with_name_and_memory() -> None:
    nvml = FakeNvml([("NVIDIA H100 80GB HBM3", 80 * GiB), (b"Tesla T4", 16 * GiB)])

    assert detect_gpus(nvml) == [
        Gpu(index=0, name="NVIDIA H100 80GB HBM3", memory=80 * GiB),
        Gpu(index=1, name="Tesla T4", memory=16 * GiB),
    ]
    assert nvml.shut_down


def test_failing_nvml_means_no_gpus() -> None:
    assert detect_gpus(FakeNvml([], fail_init=RuntimeError("NVML Shared Library Not Found"))) == []


def test_real_nvml_without_a_driver_is_no_gpus_not_a_crash() -> None:
    # No NVIDIA driver on the machines that run the tests: the real pynvml must fail quietly.
    assert isinstance(detect_gpus(), list)


def test_declared_gpus_override_detected_ones() -> None:
    detected = [Gpu(index=0, name="A100", memory=40 * GiB), Gpu(index=1, name="A100", memory=40 * GiB)]

    assert declared_gpus(detected, "auto") == detected
    assert declared_gpus(detected, 1) == detected[:1]
    assert declared_gpus(detected, 0) == []
    assert declared_gpus(detected[:1], 3) == [
        detected[0],
        Gpu(index=1, name="declared", memory=0),
        Gpu(index=2, name="declared", memory=0),
    ]
    assert declared_gpus([], 2) == [
        Gpu(index=0, name="declared", memory=0),
        Gpu(index=1, name="declared", memory=0),
    ]


def test_declared_cpus_and_memory_override_detection() -> None:
    capacity = detect_capacity(cpus=2.5, memory=3 * GiB, gpus=2, nvml=FakeNvml([("T4", GiB)]))

    assert capacity == Capacity(
        cpu=2.5,
        memory=3 * GiB,
        gpus=[Gpu(index=0, name="T4", memory=GiB), Gpu(index=1, name="declared", memory=0)],
    )


def test_detected_capacity_is_this_machine(tmp_path: Path) -> None:
    capacity = detect_capacity(gpus=0, cgroup_root=tmp_path)

    assert capacity.cpu >= 1
    assert capacity.memory > 0
    assert capacity.gpus == []


def test_cgroup_limits_cap_what_is_detected(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    (tmp_path / "memory.max").write_text(f"{GiB}\n")
    assert detect_cpus(tmp_path) == 0.5
    assert detect_memory(tmp_path) == GiB

    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "memory.max").write_text("max\n")
    assert detect_cpus(tmp_path) >= 1
    assert detect_memory(tmp_path) > GiB // 1024


@pytest.mark.parametrize(
    ("text", "size"), [("4Gi", 4 * GiB), ("512Mi", 512 * 1024**2), ("16G", 16 * 10**9), ("1000", 1000)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "4GB", "-1", "0", "lots"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


def test_cpus_and_gpus_options() -> None:
    assert options.parse_cpus("0.5") == 0.5
    assert options.parse_gpus("auto") == "auto"
    assert options.parse_gpus("2") == 2
    for bad in ("0", "-1", "x", "inf"):
        with pytest.raises(ValueError, match="bad cpu count"):
            options.parse_cpus(bad)
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ValueError, match="bad GPU count"):
            options.parse_gpus(bad)


def test_labels_and_datastores() -> None:
    assert options.parse_labels(("zone=eu,tier=gpu", "rack=3")) == {"zone": "eu", "tier": "gpu", "rack": "3"}
    assert options.parse_datastores(("landing=/data/landing/", "default=/srv/d")) == {
        "landing": "/data/landing",
        "default": "/srv/d",
    }
    with pytest.raises(ValueError, match="bad label 'zone'"):
        options.parse_labels(("zone",))
    with pytest.raises(ValueError, match="bad datastore"):
        options.parse_datastores(("landing",))
    with pytest.raises(ValueError, match="must be absolute"):
        options.parse_datastores(("landing=data",))


def test_agent_names_are_one_subject_token() -> None:
    assert options.default_agent_name("gpu01.example.com") == "gpu01"
    assert options.default_agent_name("my host") == "my-host"
    assert check_agent_name("gpu-01_a") == "gpu-01_a"
    for bad in ("a.b", "a b", "a*", ""):
        with pytest.raises(ValueError, match="bad agent name"):
            check_agent_name(bad)


def _capacity() -> Capacity:
    return Capacity(
        cpu=4,
        memory=8 * GiB,
        gpus=[Gpu(index=0, name="A", memory=16 * GiB), Gpu(index=1, name="B", memory=40 * GiB)],
    )


def test_ledger_holds_and_releases() -> None:
    ledger = Ledger(_capacity())

    assert ledger.reserve(1, Resources(cpu=3, memory=6 * GiB), []) == ()
    with pytest.raises(NoRoom, match="needs 2 CPUs, 1 of 4 free"):
        ledger.reserve(2, Resources(cpu=2, memory=0), [])
    with pytest.raises(NoRoom, match="memory"):
        ledger.reserve(2, Resources(cpu=1, memory=3 * GiB), [])
    ledger.release(1)
    assert ledger.reserve(2, Resources(cpu=4, memory=8 * GiB), []) == ()


def test_ledger_sums_fractions_exactly_enough() -> None:
    ledger = Ledger(Capacity(cpu=0.3, memory=GiB))
    ledger.reserve(1, Resources(cpu=0.1, memory=0), [])
    ledger.reserve(2, Resources(cpu=0.2, memory=0), [])


def test_ledger_gpus_named_or_chosen() -> None:
    ledger = Ledger(_capacity())

    assert ledger.reserve(1, Resources(cpu=0, memory=0, gpu=1), [1]) == (1,)
    with pytest.raises(NoRoom, match="GPU 1 is in use"):
        ledger.reserve(2, Resources(cpu=0, memory=0, gpu=1), [1])
    with pytest.raises(NoRoom, match="has no GPU 7"):
        ledger.reserve(2, Resources(cpu=0, memory=0, gpu=1), [7])
    # Asked for a GPU without naming one: the agent picks a free one.
    assert ledger.reserve(2, Resources(cpu=0, memory=0, gpu=1), []) == (0,)
    with pytest.raises(NoRoom, match="needs 1 GPUs, 0 of 2 free"):
        ledger.reserve(3, Resources(cpu=0, memory=0, gpu=1), [])


def test_ledger_checks_gpu_memory_where_known() -> None:
    ledger = Ledger(_capacity())
    with pytest.raises(NoRoom, match="GPU 0 has"):
        ledger.reserve(1, Resources(cpu=0, memory=0, gpu=1, gpu_memory=20 * GiB), [0])
    assert ledger.reserve(1, Resources(cpu=0, memory=0, gpu=1, gpu_memory=20 * GiB), [1]) == (1,)

    declared = Ledger(Capacity(cpu=1, memory=GiB, gpus=[Gpu(index=0, name="declared", memory=0)]))
    assert declared.reserve(1, Resources(cpu=0, memory=0, gpu=1, gpu_memory=80 * GiB), []) == (0,)
