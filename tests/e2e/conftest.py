from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.sluice import (
    FAST_TIMINGS,
    Background,
    SluiceAgent,
    SluiceUp,
    sluice_agents,
    sluice_ups,
    user_env,
)


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user's shell, without any Sluice settings leaking in from ours."""
    return user_env(tmp_path / "home")


@pytest.fixture
def sluice_up(tmp_path: Path, base_env: dict[str, str]) -> Iterator[Callable[..., SluiceUp]]:
    """Start `sluice up` processes; at the end stop them and anything they left running in their data dirs."""
    with sluice_ups(tmp_path, base_env) as start:
        yield start


@pytest.fixture
def sluice_daemon(sluice_up, base_env: dict[str, str]) -> SluiceUp:
    """A control plane with no local agent (`sluice up --agents 0`) and fast timings: agents join it."""
    return sluice_up("--agents", "0", env=base_env | FAST_TIMINGS)


@pytest.fixture
def sluice_agent(sluice_up, tmp_path: Path) -> Iterator[Callable[..., SluiceAgent]]:
    """Start `sluice agent` processes joined to a daemon; at the end stop them (before the daemons:
    hence the dependency on ``sluice_up``)."""
    with sluice_agents(tmp_path) as start:
        yield start


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
