"""Crashes, end to end: `kill -9` of an agent mid-step, and of the daemon mid-run.

A step leaves a line in a file each time it runs to completion, so counting lines shows whether
anything ran twice; gate files let the test decide when a step may finish.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.sluice import (
    FAST_TIMINGS,
    api_get,
    apply,
    get_run,
    start_run,
    steps_of,
    wait_for,
    wait_run,
    wait_step,
)

pytestmark = pytest.mark.e2e

SURVIVOR = """
kind: Pipeline
name: survivor
params:
  dir: {type: string}
steps:
  - name: work
    command:
      - sh
      - -c
      - |
        if [ -e "$1/started" ]; then echo done >> "$1/completions"; exit 0; fi
        touch "$1/started"
        sleep 300
      - sh
      - ${params.dir}
    retries: 0
"""

RELAY = """
kind: Pipeline
name: relay
params:
  dir: {type: string}
steps:
  - name: during
    command: [sh, -c, '$0 "$1" during-gate && echo during >> "$1/completions"', "${params.dir}/wait.sh",
              "${params.dir}"]
    resources: {cpu: 1}
  - name: across
    command: [sh, -c, '$0 "$1" across-gate && echo across >> "$1/completions"', "${params.dir}/wait.sh",
              "${params.dir}"]
    resources: {cpu: 1}
  - name: last
    after: [during, across]
    command: [sh, -c, 'echo last >> "$1/completions"', sh, "${params.dir}"]
    resources: {cpu: 1}
"""
WAIT_SH = """#!/bin/sh
# wait.sh DIR GATE: note that the step started, then wait (at most 60 s) for the file DIR/GATE.
touch "$1/$2.started"
i=0
while [ ! -e "$1/$2" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
test -e "$1/$2"
"""


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_step_on_a_killed_agent_is_lost_and_runs_elsewhere(
    sluice_daemon, sluice_agent, tmp_path: Path
) -> None:
    env = sluice_daemon.client_env
    agents = {
        name: sluice_agent(sluice_daemon, name, "--cpus", "1", "--memory", "1Gi", "--gpus", "0", wait=False)
        for name in ("east", "west")
    }
    for agent in agents.values():
        agent.wait_listed(env)
    apply(SURVIVOR, env)
    run_id = start_run("survivor", env, f"dir={tmp_path}")
    wait_for(lambda: (tmp_path / "started").exists(), timeout=20)
    doomed = wait_step(run_id, "work", env, "running")["attempts"][0]["agent"]

    agents[doomed].kill()

    run = wait_run(run_id, env, ("succeeded", "failed"), timeout=30)
    assert run["status"] == "succeeded"
    attempts = steps_of(run)["work"]["attempts"]
    (survivor,) = set(agents) - {doomed}
    assert [(a["number"], a["status"], a["agent"]) for a in attempts] == [
        (1, "lost", doomed),
        (2, "succeeded", survivor),
    ]
    assert lines(tmp_path / "completions") == ["done"]
    statuses = {agent["name"]: agent["status"] for agent in api_get("/agents", env)["items"]}
    assert statuses == {doomed: "lost", survivor: "ready"}


@pytest.mark.timeout(120)
def test_a_daemon_killed_mid_run_finishes_the_run_after_a_restart(
    sluice_up, sluice_agent, base_env: dict[str, str], tmp_path: Path
) -> None:
    data_dir, env = tmp_path / "state", base_env | FAST_TIMINGS
    daemon = sluice_up("--agents", "0", data_dir=data_dir, env=env)
    sluice_agent(daemon, "steady", "--cpus", "2", "--memory", "1Gi", "--gpus", "0")
    work = tmp_path / "work"
    work.mkdir()
    (work / "wait.sh").write_text(WAIT_SH)
    (work / "wait.sh").chmod(0o755)
    apply(RELAY, daemon.client_env)
    run_id = start_run("relay", daemon.client_env, f"dir={work}")
    wait_for(lambda: (work / "during-gate.started").exists() and (work / "across-gate.started").exists())
    wait_step(run_id, "across", daemon.client_env, "running")
    wait_step(run_id, "during", daemon.client_env, "running")

    daemon.kill()  # PostgreSQL and NATS are left running, as after a crash
    (work / "during-gate").touch()  # `during` finishes while no daemon runs
    wait_for(lambda: lines(work / "completions") == ["during"])

    daemon = sluice_up("--agents", "0", data_dir=data_dir, port=daemon.port, env=env)
    client_env = daemon.client_env
    wait_step(run_id, "during", client_env, "succeeded", timeout=30)
    across = steps_of(get_run(run_id, client_env))["across"]
    assert across["status"] == "running"  # re-adopted, not lost: the agent still runs it
    (work / "across-gate").touch()

    run = wait_run(run_id, client_env, ("succeeded", "failed", "cancelled"), timeout=30)
    assert run["status"] == "succeeded"
    assert sorted(lines(work / "completions")) == ["across", "during", "last"]
    for name, step in steps_of(run).items():
        assert step["status"] == "succeeded", name
        assert [(a["number"], a["status"], a["exit_code"]) for a in step["attempts"]] == [
            (1, "succeeded", 0)
        ], name
        assert step["attempts"][0]["finished_at"] is not None, name
