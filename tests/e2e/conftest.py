from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from daemon.embedded import free_port
from tests.e2e.sluice import SluiceUp


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user's shell, without any Sluice settings leaking in from ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    return env | {"HOME": str(tmp_path / "home"), "SLUICE_LOG_FORMAT": "json"}


@pytest.fixture
def sluice_up(tmp_path: Path, base_env: dict[str, str]) -> Iterator[Callable[..., SluiceUp]]:
    """Start `sluice up` processes; at the end stop them and anything they left running in their data dirs."""
    started: list[SluiceUp] = []

    def start(
        *extra: str, data_dir: Path | None = None, port: int | None = None, env: dict[str, str] | None = None
    ) -> SluiceUp:
        process = SluiceUp(data_dir or tmp_path / "data", port or free_port(), env or base_env, *extra)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        if process.process.poll() is None:
            process.stop()
    data_dirs = {str(process.data_dir) for process in started}
    for leftover in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(leftover.info["cmdline"] or [])
        if any(data_dir in cmdline for data_dir in data_dirs):
            leftover.kill()
