"""Runs on agents, end to end: published pipelines run on real `sluice agent` processes.

One daemon (`sluice up --agents 0`) and separate agents with declared capacity, driven through the
CLI as a user would. Steps are small shell scripts; what they leave on disk (pid files, markers,
outputs) is the evidence that they ran, stopped or were killed.
"""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from tests.e2e.sluice import (
    apply,
    cli,
    pid_gone,
    show_run,
    start_run,
    steps_of,
    wait_for,
    wait_run,
    wait_step,
)

pytestmark = pytest.mark.e2e

FAN_OUT = r"""
kind: Pipeline
name: fan-out
params:
  gate: {type: string}
steps:
  - name: prep
    command:
      - sh
      - -c
      - |
        printf 'a\nb\nc\n' > "$1/rows.txt"
        echo '{"name": "rows", "value": 3}' >> "$SLUICE_METRICS"
        echo prepared 3 rows
      - sh
      - ${outputs.table}
    outputs: [table]
    resources: {cpu: 1}
  - name: count
    command:
      - sh
      - -c
      - |
        i=0; while [ ! -e "$1" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
        wc -l < "$2/rows.txt" | tr -d ' ' > "$3/count.txt"
        echo "counted $(cat "$3/count.txt") rows"
      - sh
      - ${params.gate}
      - ${inputs.table}
      - ${outputs.count}
    inputs: {table: "${steps.prep.outputs.table}"}
    outputs: [count]
    resources: {cpu: 1}
  - name: reverse
    command:
      - sh
      - -c
      - |
        echo first line
        i=0; while [ ! -e "$1" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
        sort -r "$2/rows.txt" > "$3/reversed.txt"
        echo last line
      - sh
      - ${params.gate}
      - ${inputs.table}
      - ${outputs.reversed}
    inputs: {table: "${steps.prep.outputs.table}"}
    outputs: [reversed]
    resources: {cpu: 1}
"""

SLEEPY = """
kind: Pipeline
name: sleepy
params:
  dir: {type: string}
steps:
  - name: nap
    command: [sh, -c, 'sleep 300 & echo $! > "$1/child.pid"; echo $$ > "$1/leader.pid"; wait',
              sh, "${params.dir}"]
    timeout: 2s
    retries: 0
"""

ENDLESS = """
kind: Pipeline
name: endless
params:
  dir: {type: string}
steps:
  - name: forever
    command: [sh, -c, 'sleep 300 & echo $! > "$1/child.pid"; echo $$ > "$1/leader.pid"; wait',
              sh, "${params.dir}"]
"""

FLAKY = """
kind: Datastore
name: scratch
type: local
path: {scratch}
---
kind: Pipeline
name: flaky
steps:
  - name: fetch
    command:
      - sh
      - -c
      - |
        if [ -e "$1/marker" ]; then echo "found the marker"; exit 0; fi
        touch "$1/marker"
        echo "no marker yet: failing" >&2
        exit 3
      - sh
      - ${{inputs.state}}
    inputs:
      state: {{datastore: scratch, path: flaky}}
    retries: 1
"""

BOXED = """
kind: Pipeline
name: boxed
steps:
  - name: hello
    image: {image}
    command: [sh, -c, 'test -e /.dockerenv && echo "hello from a container" > "$1/where.txt"',
              sh, "${{outputs.greeting}}"]
    outputs: [greeting]
    resources: {{cpu: 0.5, memory: 64Mi}}
"""


def read_pid(path: Path) -> int:
    return wait_for(lambda: path.exists() and path.read_text().strip() and int(path.read_text()))


@pytest.mark.timeout(90)
def test_fan_out_on_two_agents_passes_outputs_stores_metrics_and_streams_logs(
    sluice_daemon, sluice_agent, background, tmp_path: Path
) -> None:
    env = sluice_daemon.client_env
    # One CPU each and one CPU per step: the two parallel steps cannot share an agent.
    agents = [
        sluice_agent(sluice_daemon, name, "--cpus", "1", "--memory", "1Gi", "--gpus", "0", wait=False)
        for name in ("north", "south")
    ]
    for agent in agents:
        agent.wait_listed(env)
    apply(FAN_OUT, env)
    gate = tmp_path / "gate"

    waiting = background("run", "fan-out", "-p", f"gate={gate}", "--wait", env=env)
    run_id = wait_for(lambda: waiting.lines and waiting.lines[0].strip())
    reverse = wait_step(run_id, "reverse", env, "running")
    count = wait_step(run_id, "count", env, "running")
    assert {reverse["attempts"][0]["agent"], count["attempts"][0]["agent"]} == {"north", "south"}

    follow = background("runs", "logs", run_id, "reverse", "--follow", env=env)
    wait_for(lambda: "first line" in follow.lines, timeout=15)
    assert steps_of(show_run(run_id, env))["reverse"]["status"] == "running"  # the gate is still shut
    gate.touch()
    assert follow.wait(20) == 0, follow.output
    assert follow.lines[-1] == "last line"
    assert waiting.wait(30) == 0, waiting.output

    run = show_run(run_id, env)
    assert run["status"] == "succeeded"
    steps = steps_of(run)
    assert {(m["name"], m["value"]) for m in steps["prep"]["metrics"]} == {("rows", 3)}
    assert Path(steps["prep"]["outputs"]["table"], "rows.txt").read_text() == "a\nb\nc\n"
    assert Path(steps["count"]["outputs"]["count"], "count.txt").read_text() == "3\n"
    assert Path(steps["reverse"]["outputs"]["reversed"], "reversed.txt").read_text() == "c\nb\na\n"
    logs = cli("runs", "logs", run_id, "count", env=env)
    assert logs.returncode == 0, logs.stderr
    assert "counted 3 rows" in logs.stdout
    assert "prepared 3 rows" in cli("runs", "logs", run_id, env=env).stdout


def test_a_failing_step_succeeds_on_its_retry(sluice_daemon, sluice_agent, tmp_path: Path) -> None:
    env = sluice_daemon.client_env
    scratch = tmp_path / "scratch"
    (scratch / "flaky").mkdir(parents=True)
    sluice_agent(sluice_daemon, "worker", "--cpus", "1", "--memory", "1Gi", "--gpus", "0")
    apply(FLAKY.format(scratch=scratch), env)

    result = cli("run", "flaky", "--wait", env=env, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.splitlines()[0].strip()
    attempts = steps_of(show_run(run_id, env))["fetch"]["attempts"]
    assert [(a["number"], a["status"], a["exit_code"]) for a in attempts] == [
        (1, "failed", 3),
        (2, "succeeded", 0),
    ]
    first = cli("runs", "logs", run_id, "fetch", "--attempt", "1", env=env)
    assert "no marker yet: failing" in first.stdout
    assert "found the marker" in cli("runs", "logs", run_id, "fetch", env=env).stdout


def test_a_step_past_its_timeout_is_killed_with_its_children(
    sluice_daemon, sluice_agent, tmp_path: Path
) -> None:
    env = sluice_daemon.client_env
    sluice_agent(sluice_daemon, "worker", "--cpus", "1", "--memory", "1Gi", "--gpus", "0")
    apply(SLEEPY, env)

    result = cli("run", "sleepy", "-p", f"dir={tmp_path}", "--wait", env=env, timeout=60)

    assert result.returncode == 1, result.stdout + result.stderr
    run = show_run(result.stdout.splitlines()[0].strip(), env)
    assert run["status"] == "failed"
    (attempt,) = steps_of(run)["nap"]["attempts"]
    assert attempt["status"] == "failed"
    assert "timed out" in attempt["error"]
    for pid_file in ("leader.pid", "child.pid"):
        pid = read_pid(tmp_path / pid_file)
        wait_for(lambda pid=pid: pid_gone(pid), timeout=10)


def test_cancelling_a_run_stops_its_running_step(sluice_daemon, sluice_agent, tmp_path: Path) -> None:
    env = sluice_daemon.client_env
    sluice_agent(sluice_daemon, "worker", "--cpus", "1", "--memory", "1Gi", "--gpus", "0")
    apply(ENDLESS, env)
    run_id = start_run("endless", env, f"dir={tmp_path}")
    leader, child = read_pid(tmp_path / "leader.pid"), read_pid(tmp_path / "child.pid")
    assert not pid_gone(leader)

    cancelled = cli("runs", "cancel", run_id, env=env)

    assert cancelled.returncode == 0, cancelled.stderr
    run = wait_run(run_id, env, ("cancelled",), timeout=20)
    step = steps_of(run)["forever"]
    assert step["status"] == "cancelled"
    assert step["attempts"][0]["status"] == "cancelled"
    wait_for(lambda: pid_gone(leader) and pid_gone(child), timeout=15)


def test_a_step_with_an_image_runs_in_a_container(
    sluice_daemon, sluice_agent, docker_image: str, tmp_path: Path
) -> None:
    env = sluice_daemon.client_env
    sluice_agent(
        sluice_daemon, "boxer", "--cpus", "1", "--memory", "1Gi", "--gpus", "0",
        "--executor", "auto", "--docker-network", "none",
    )  # fmt: skip
    apply(BOXED.format(image=docker_image), env)

    result = cli("run", "boxed", "--wait", env=env, timeout=90)

    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.splitlines()[0].strip()
    step = steps_of(show_run(run_id, env))["hello"]
    assert Path(step["outputs"]["greeting"], "where.txt").read_text() == "hello from a container\n"
    client = docker.from_env(timeout=10)
    try:
        left = client.containers.list(all=True, filters={"label": f"sluice.run={run_id}"})
    finally:
        client.close()
    assert left == []  # removed once its logs were collected
