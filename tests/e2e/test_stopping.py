"""Stopping loses nothing: `sluice up` stopped mid-step finishes the run when it comes back, an agent
that stops says so at once, local agents never outlive their `up`, and an agent with no NATS says so
in one line."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.sluice import (
    WAIT_FOR_GATE,
    SluiceUp,
    api_get,
    apply,
    cli,
    pid_gone,
    start_run,
    steps_of,
    wait_for,
    wait_run,
    wait_step,
)

pytestmark = pytest.mark.e2e

LONG = f"""
kind: Pipeline
name: long
params:
  gate: {{type: string}}
steps:
  - name: work
    command: [sh, -c, '{WAIT_FOR_GATE} && echo finished', sh, "${{params.gate}}"]
    retries: 0
"""
"""A step that runs until the test creates the file ``gate`` (a param)."""


def test_up_stopped_mid_step_finishes_the_run_when_it_comes_back(sluice_up, tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    first = sluice_up(data_dir=data_dir)
    gate = tmp_path / "gate"
    apply(LONG, first.client_env)
    run_id = start_run("long", first.client_env, f"gate={gate}")
    wait_step(run_id, "work", first.client_env, "running")

    assert first.stop() == 0  # SIGTERM: the local agent drains 5 s, then stops the step
    gate.touch()  # the step could not finish before `up` stopped it; its next attempt can
    second = sluice_up(data_dir=data_dir, port=first.port)
    run = wait_run(run_id, second.client_env, ("succeeded", "failed"), timeout=60)

    assert run["status"] == "succeeded"
    attempts = steps_of(run)["work"]["attempts"]
    assert [attempt["status"] for attempt in attempts] == ["lost", "succeeded"]  # no retry was used
    assert "stopped before the step finished" in attempts[0]["error"]


def test_an_agent_that_stops_shows_stopped_at_once(sluice_daemon: SluiceUp, sluice_agent) -> None:
    env = sluice_daemon.client_env
    agent = sluice_agent(sluice_daemon, "leaving", "--gpus", "0")

    assert agent.stop() == 0
    stopped_at = time.monotonic()

    def status() -> str | None:
        listed = {item["name"]: item for item in api_get("/agents", env)["items"]}
        return listed["leaving"]["status"] if listed["leaving"]["status"] != "ready" else None

    assert wait_for(status, timeout=5) == "stopped"
    assert time.monotonic() - stopped_at < 1.0  # not after the heartbeat timeout (3 s here)


def test_local_agents_never_outlive_up_killed_at_once(sluice_up, tmp_path: Path) -> None:
    up = sluice_up("--agents", "2")

    def local_agents() -> list[psutil.Process]:
        return [
            process
            for process in psutil.process_iter(["cmdline"])
            if "runners" in (process.info["cmdline"] or [])
            and str(up.data_dir) in " ".join(process.info["cmdline"])
        ]

    agents = wait_for(lambda: len(found := local_agents()) == 2 and found, timeout=10)
    time.sleep(0.3)

    up.kill()

    wait_for(lambda: all(pid_gone(agent.pid) for agent in agents), timeout=5)


def test_an_agent_without_nats_says_so_in_one_line(base_env: dict[str, str], tmp_path: Path) -> None:
    env = base_env | {"SLUICE_NATS_URL": "nats://127.0.0.1:1", "SLUICE_NATS_CONNECT_TIMEOUT": "2"}

    result = cli("agent", "--name", "alone", "--cache-dir", str(tmp_path / "cache"), env=env, timeout=30)

    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("Error: cannot connect to NATS at nats://127.0.0.1:1")
    )
    assert "Traceback" not in result.stderr + result.stdout
    assert "nats_error" not in result.stderr + result.stdout
