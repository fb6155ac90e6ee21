from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from daemon.runtime.embedded import free_port
from tests.e2e.sluice import FAST_TIMINGS, Background, SluiceAgent, SluiceUp


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
    for number, process in enumerate(started, 1):
        try:
            if process.process.poll() is None:
                process.stop()
        except subprocess.TimeoutExpired:
            process.kill()
        finally:
            (tmp_path / f"up-{number}.log").write_text("".join(process.output))  # for the post-mortem
    data_dirs = {str(process.data_dir) for process in started}
    for leftover in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(leftover.info["cmdline"] or [])
        if any(data_dir in cmdline for data_dir in data_dirs):
            leftover.kill()


@pytest.fixture
def sluice_daemon(sluice_up, base_env: dict[str, str]) -> SluiceUp:
    """A control plane with no local agent (`sluice up --agents 0`) and fast timings: agents join it."""
    return sluice_up("--agents", "0", env=base_env | FAST_TIMINGS)


@pytest.fixture
def sluice_agent(sluice_up, tmp_path: Path, base_env: dict[str, str]) -> Iterator[Callable[..., SluiceAgent]]:
    """Start `sluice agent` processes joined to a daemon; at the end stop them (before the daemons:
    hence the dependency on ``sluice_up``), and kill whatever their steps left running (a step
    outlives an agent killed with -9)."""
    started: list[SluiceAgent] = []

    def start(
        daemon: SluiceUp, name: str, *extra: str, wait: bool = True, creds: Path | None = None
    ) -> SluiceAgent:
        """Start agent ``name`` joined to ``daemon`` (with the daemon's NATS settings, TLS included)
        with credentials of its own (``creds``, or minted now); with ``wait`` (default) until the
        daemon lists it."""
        agent = SluiceAgent(
            name,
            daemon.env | {"SLUICE_NATS_URL": daemon.nats_url},
            tmp_path / "agents" / name,
            tmp_path / f"agent-{name}.log",
            "--drain-timeout",
            "1",
            "--creds",
            str(creds or daemon.creds("agent", name)),
            *extra,
        )
        started.append(agent)
        return agent.start(daemon.client_env, wait=wait)

    yield start
    for agent in started:
        agent.stop()
    cache_dirs = [agent.cache_dir for agent in started]
    for leftover in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if any(Path(leftover.cwd()).is_relative_to(cache_dir) for cache_dir in cache_dirs):
                leftover.kill()


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    """Start `sluice` commands that keep running (``run --wait``, ``runs logs --follow``); killed at
    the end if still running."""
    started: list[Background] = []

    def start(*args: str, env: dict[str, str]) -> Background:
        started.append(Background(*args, env=env))
        return started[-1]

    yield start
    for command in started:
        command.kill()
