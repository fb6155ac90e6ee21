"""Dispatch and step events against real PostgreSQL and NATS, with fake agents as real NATS peers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runners.protocol import Gpu, Metric
from tests.integration.fake_agent import GiB, Harness, Outcome, harness

THREE_STEPS = """
kind: Pipeline
name: flow
params:
  date: {type: string}
  rows: {type: integer, default: 10}
steps:
  - name: prep
    command: [prep, --date, "${params.date}", --out, "${outputs.features}", "${run.pipeline}/${run.version}"]
    outputs: [features]
    env: {WHEN: "${params.date}"}
  - name: left
    command: [left, "${inputs.features}", "${params.rows}"]
    inputs: {features: "${steps.prep.outputs.features}"}
    outputs: [scores]
  - name: right
    command: [right, "${steps.prep.outputs.features}"]
    after: [prep]
"""


@pytest.fixture
async def system(pool, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(pool, nats_url, tmp_path) as system:
        yield system


async def test_run_flows_through_agents_with_rendered_paths(system: Harness, tmp_path: Path) -> None:
    agent = await system.agent("a1", datastores={"default": "/mnt/store"})
    await system.apply(THREE_STEPS)
    created = await system.start_run("flow", params={"date": "2024-05-01"})
    run_id = created["run_id"]
    assert created["status"] == "running"  # its first step was placed as it was created: a1 was free

    run = await system.wait_run(run_id, "succeeded")
    by_name = {a.step: a for a in agent.assignments}
    assert set(by_name) == {"prep", "left", "right"}
    prep = by_name["prep"]
    out = f"/mnt/store/runs/{run_id}/prep/features"
    assert prep.argv == ["prep", "--date", "2024-05-01", "--out", out, "flow/1"]
    assert prep.outputs == {"features": out}
    assert prep.env["WHEN"] == "2024-05-01"
    assert prep.env["SLUICE_RUN_ID"] == run_id
    assert prep.env["SLUICE_STEP"] == "prep"
    assert prep.env["SLUICE_OUTPUT_FEATURES"] == out
    assert prep.log_path == f"/mnt/store/runs/{run_id}/prep/logs/attempt-1.log"
    assert prep.datastores == {"default": "/mnt/store"}
    assert by_name["left"].argv == ["left", out, "10"]
    assert by_name["left"].env["SLUICE_INPUT_FEATURES"] == out
    assert by_name["right"].argv == ["right", out]

    steps = {step["name"]: step for step in run["steps"]}
    assert [step["status"] for step in run["steps"]] == ["succeeded"] * 3
    # The daemon records outputs as it sees the default datastore, not as the agent does.
    assert steps["prep"]["outputs"] == {"features": f"{tmp_path}/default/runs/{run_id}/prep/features"}
    assert steps["prep"]["attempts"][0]["agent"] == "a1"
    assert steps["prep"]["attempts"][0]["status"] == "succeeded"
    assert steps["prep"]["reused"] is False
    assert steps["prep"]["fingerprint"].startswith("sha256:")
    assert steps["prep"]["reuse"]["outcome"] == "executed"
    assert run["started_at"] is not None
    assert run["finished_at"] is not None


async def test_failing_attempt_is_retried_and_metrics_stored(system: Harness) -> None:
    calls = {"n": 0}

    def flaky(assignment):
        calls["n"] += 1
        if calls["n"] == 1:
            return Outcome(status="failed", exit_code=3)
        return Outcome(metrics=[Metric(name="auc", value=0.9, extra={"step": 1})])

    await system.agent("a1", behaviour=flaky)
    await system.apply(
        "kind: Pipeline\nname: flaky\nsteps:\n  - name: only\n    command: [x]\n    retries: 1\n"
    )
    run_id = (await system.start_run("flaky"))["run_id"]
    run = await system.wait_run(run_id, "succeeded")
    (step,) = run["steps"]
    assert [a["status"] for a in step["attempts"]] == ["failed", "succeeded"]
    assert step["attempts"][0]["exit_code"] == 3
    assert step["attempts"][0]["error"] == "exit code 3"
    assert [a["number"] for a in step["attempts"]] == [1, 2]
    assert step["metrics"] == [{"name": "auc", "value": 0.9, "step": 1}]


async def test_step_failing_for_good_skips_downstream_and_fails_the_run(system: Harness) -> None:
    def behaviour(assignment):
        return Outcome(status="failed", exit_code=1) if assignment.step == "prep" else Outcome()

    agent = await system.agent("a1", behaviour=behaviour)
    await system.apply(THREE_STEPS)
    run_id = (await system.start_run("flow", params={"date": "d"}))["run_id"]
    run = await system.wait_run(run_id, "failed")
    assert {step["name"]: step["status"] for step in run["steps"]} == {
        "prep": "failed",
        "left": "skipped",
        "right": "skipped",
    }
    assert [a.step for a in agent.assignments] == ["prep"]


async def test_duplicate_and_late_step_events_change_nothing(system: Harness) -> None:
    agent = await system.agent("a1")
    await system.apply(
        "kind: Pipeline\nname: once\nsteps:\n  - name: only\n    command: [x]\n    retries: 2\n"
    )
    run_id = (await system.start_run("once"))["run_id"]
    run = await system.wait_run(run_id, "succeeded")
    attempt_id = agent.assignments[0].attempt_id
    # Republished with new message ids, so JetStream's own dedupe does not hide them: the daemon must.
    await agent.finish(attempt_id, Outcome(status="failed", exit_code=9))
    await agent.js.publish(
        f"sluice.steps.{attempt_id}.finished",
        b'{"attempt_id": %d, "agent_id": "a1", "status": "failed", "finished_at": 1.0}' % attempt_id,
    )
    await system.wait_for(lambda: True, what="nothing")
    import asyncio

    await asyncio.sleep(0.3)
    again = await system.get_run(run_id)
    assert again["status"] == "succeeded"
    assert again["steps"] == run["steps"]
    assert len(agent.assignments) == 1


async def test_lost_agent_attempt_is_lost_and_step_runs_elsewhere(system: Harness) -> None:
    first = await system.agent("a1", behaviour=lambda a: Outcome(hold=True))
    await system.apply("kind: Pipeline\nname: long\nsteps:\n  - name: only\n    command: [x]\n")
    run_id = (await system.start_run("long"))["run_id"]
    await system.wait_step(run_id, "only", lambda step: step["status"] == "running")
    second = await system.agent("a2")
    await first.stop()  # silent from now on: lost after the heartbeat timeout
    run = await system.wait_run(run_id, "succeeded", within=10)
    (step,) = run["steps"]
    assert [(a["agent"], a["status"]) for a in step["attempts"]] == [("a1", "lost"), ("a2", "succeeded")]
    assert "no heartbeat" in step["attempts"][0]["error"]
    assert len(second.assignments) == 1
    agents = {
        item["id"]: item for item in (await (await system.client.get("/api/v1/agents")).json())["items"]
    }
    assert agents["a1"]["status"] == "lost"
    assert agents["a2"]["status"] == "ready"


async def test_refused_assignment_goes_to_another_agent(system: Harness) -> None:
    await system.agent("a1", refuse="draining", cpu=8)
    other = await system.agent("a2", cpu=2)
    await system.apply("kind: Pipeline\nname: one\nsteps:\n  - name: only\n    command: [x]\n")
    run_id = (await system.start_run("one"))["run_id"]
    run = await system.wait_run(run_id, "succeeded")
    attempts = run["steps"][0]["attempts"]
    # a1 is the best fit (it has more room than... no: best fit is least leftover, a2) — whichever was
    # tried first, the run ends on a2 and a refusal leaves a lost attempt behind.
    assert attempts[-1]["agent"] == "a2"
    assert all(a["status"] == "lost" and "refused" in a["error"] for a in attempts[:-1])
    assert len(other.assignments) == 1


async def test_gpu_placement_and_no_oversubscription(system: Harness) -> None:
    gpu = await system.agent(
        "gpu-1",
        cpu=8,
        memory=32 * GiB,
        gpus=[Gpu(index=0, name="A100", memory=40 * GiB), Gpu(index=1, name="T4", memory=16 * GiB)],
        behaviour=lambda a: Outcome(hold=True),
    )
    cpu = await system.agent("cpu-1", cpu=2, memory=4 * GiB, behaviour=lambda a: Outcome(hold=True))
    await system.apply(
        """
kind: Pipeline
name: mixed
steps:
  - name: train
    command: [train]
    resources: {cpu: 1, gpu: 1, gpu_memory: 20Gi}
  - name: a
    command: [a]
    resources: {cpu: 1}
  - name: b
    command: [b]
    resources: {cpu: 1}
  - name: c
    command: [c]
    resources: {cpu: 1}
"""
    )
    run_id = (await system.start_run("mixed"))["run_id"]
    await system.wait_for(lambda: len(gpu.assignments) + len(cpu.assignments) == 4, what="4 assignments")
    train = next(a for a in gpu.assignments if a.step == "train")
    assert train.gpus == [0]  # the only GPU with 20Gi
    # CPU steps prefer the GPU-less agent while it has room (2 CPUs), the third goes to the GPU agent.
    assert sorted(a.step for a in cpu.assignments) in (["a", "b"], ["a", "c"], ["b", "c"])
    assert len([a for a in gpu.assignments if a.step != "train"]) == 1
    agents = {
        item["id"]: item for item in (await (await system.client.get("/api/v1/agents")).json())["items"]
    }
    assert agents["cpu-1"]["free"] == {"cpu": 0.0, "memory": 4 * GiB, "gpu": 0, "gpus": []}
    assert agents["gpu-1"]["free"]["gpu"] == 1
    assert agents["gpu-1"]["free"]["gpus"] == [1]  # GPU 0 runs train
    assert sorted(agents["gpu-1"]["running"]) == sorted(a.attempt_id for a in gpu.assignments)

    # A second run: its CPU steps fit only on gpu-1 (cpu-1 is full); its GPU step finds no free GPU
    # with 20Gi (the T4 is too small) and waits, saying why.
    second = (await system.start_run("mixed"))["run_id"]
    await system.wait_for(lambda: len(gpu.assignments) + len(cpu.assignments) == 7, what="7 assignments")
    assert len(cpu.assignments) == 2
    step = await system.wait_step(second, "train", lambda step: step["waiting_reason"])
    assert step["waiting_reason"] == "no agent has 1 free GPU with 20Gi (largest: gpu-1 with 0)"
    for agent in (gpu, cpu):
        for attempt_id in list(agent.running):
            await agent.finish(attempt_id)
    await system.wait_run(run_id, "succeeded")
    train = await system.wait_step(second, "train", lambda step: step["status"] == "running")
    assert train["attempts"][0]["gpus"] == [0]
    await gpu.finish(gpu.assignments[-1].attempt_id)
    await system.wait_run(second, "succeeded")


async def test_step_that_fits_nowhere_waits_with_a_reason(system: Harness) -> None:
    await system.agent(
        "gpu-1", gpus=[Gpu(index=0, name="T4", memory=16 * GiB)], behaviour=lambda a: Outcome(hold=True)
    )
    await system.apply(
        "kind: Pipeline\nname: big\nsteps:\n  - name: huge\n    command: [x]\n    resources: {gpu: 2}\n"
    )
    run_id = (await system.start_run("big"))["run_id"]
    step = await system.wait_step(run_id, "huge", lambda step: step["waiting_reason"])
    assert step["status"] == "ready"
    assert step["waiting_reason"] == "needs 2 GPUs; no agent has more than 1"
    # Stored too, for a daemon that restarts or a reader without the scheduler.
    await system.wait_for(
        lambda: system.pool.fetchval("SELECT waiting_reason IS NOT NULL FROM step_runs WHERE name = 'huge'"),
        what="stored reason",
    )

    # A second agent does not help a 2-GPU step either: no single agent has 2 GPUs.
    await system.agent("gpu-2", gpus=[Gpu(index=0, name="T4", memory=16 * GiB)])
    await system.agent(
        "gpu-3", gpus=[Gpu(index=0, name="T4", memory=16 * GiB), Gpu(index=1, name="T4", memory=16 * GiB)]
    )
    await system.wait_run(run_id, "succeeded")


async def test_cancel_stops_running_steps_and_cancels_the_rest(system: Harness) -> None:
    agent = await system.agent("a1", behaviour=lambda a: Outcome(hold=True))
    await system.apply(THREE_STEPS)
    run_id = (await system.start_run("flow", params={"date": "d"}))["run_id"]
    await system.wait_step(run_id, "prep", lambda step: step["status"] == "running")
    response = await system.client.post(f"/api/v1/runs/{run_id}/cancel")
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"
    run = await system.wait_step(run_id, "prep", lambda step: step["status"] == "cancelled")
    run = await system.get_run(run_id)
    assert run["status"] == "cancelled"
    assert {step["name"]: step["status"] for step in run["steps"]} == {
        "prep": "cancelled",
        "left": "cancelled",
        "right": "cancelled",
    }
    assert agent.cancelled == [agent.assignments[0].attempt_id]
    assert run["steps"][0]["attempts"][0]["status"] == "cancelled"
    again = await system.client.post(f"/api/v1/runs/{run_id}/cancel")
    assert again.status == 200


async def test_restart_readopts_a_running_attempt(system: Harness) -> None:
    agent = await system.agent("a1", behaviour=lambda a: Outcome(hold=True))
    await system.apply(THREE_STEPS)
    run_id = (await system.start_run("flow", params={"date": "d"}))["run_id"]
    await system.wait_step(run_id, "prep", lambda step: step["status"] == "running")
    await system.stop_daemon()
    attempt_id = agent.assignments[0].attempt_id
    await agent.finish(attempt_id)  # finishes while no daemon runs: JetStream keeps the event
    await system.start(fresh_stream=False)
    agent.behaviour = lambda a: Outcome()
    run = await system.wait_run(run_id, "succeeded")
    prep = run["steps"][0]
    assert [a["status"] for a in prep["attempts"]] == ["succeeded"]
    assert len(agent.assignments) == 3  # prep once, then left and right


async def test_restart_keeps_a_running_attempt_when_its_agent_lists_it(system: Harness) -> None:
    agent = await system.agent("a1", behaviour=lambda a: Outcome(hold=True))
    await system.apply("kind: Pipeline\nname: long\nsteps:\n  - name: only\n    command: [x]\n")
    run_id = (await system.start_run("long"))["run_id"]
    await system.wait_step(run_id, "only", lambda step: step["status"] == "running")
    await system.stop_daemon()
    await system.start(fresh_stream=False)
    import asyncio

    await asyncio.sleep(system.settings.heartbeat_timeout_s * 2)  # beyond the timeout: the agent lives
    step = (await system.get_run(run_id))["steps"][0]
    assert step["status"] == "running"
    await agent.finish(agent.assignments[0].attempt_id)
    await system.wait_run(run_id, "succeeded")
    assert len(agent.assignments) == 1


async def test_attempt_the_agent_no_longer_lists_is_lost(system: Harness) -> None:
    agent = await system.agent("a1", behaviour=lambda a: Outcome(hold=True))
    await system.apply("kind: Pipeline\nname: long\nsteps:\n  - name: only\n    command: [x]\n")
    run_id = (await system.start_run("long"))["run_id"]
    await system.wait_step(run_id, "only", lambda step: step["status"] == "running")
    agent.report_running = False  # alive, but it forgot the attempt (say it restarted)
    agent.behaviour = lambda a: Outcome()
    run = await system.wait_run(run_id, "succeeded", within=10)
    attempts = run["steps"][0]["attempts"]
    assert [a["status"] for a in attempts] == ["lost", "succeeded"]
    assert "does not report" in attempts[0]["error"]


async def test_an_attempt_placed_by_a_daemon_that_died_is_lost_and_runs_again(system: Harness) -> None:
    agent = await system.agent("a1", behaviour=lambda a: Outcome(hold=True))
    await system.apply("kind: Pipeline\nname: long\nsteps:\n  - name: only\n    command: [x]\n")
    run_id = (await system.start_run("long"))["run_id"]
    await system.wait_step(run_id, "only", lambda step: step["status"] == "running")
    # As after a daemon that placed it died: this daemon holds nothing for the attempt, and its
    # agent never ran it (the assignment did not go out).
    system.scheduler.registry.release(agent.assignments[0].attempt_id)
    agent.report_running = False
    agent.behaviour = lambda a: Outcome()

    run = await system.wait_run(run_id, "succeeded", within=15)

    attempts = run["steps"][0]["attempts"]
    assert [a["status"] for a in attempts] == ["lost", "succeeded"]
    assert "does not report" in attempts[0]["error"]


async def test_runs_take_turns_so_a_wide_run_does_not_starve_another(system: Harness) -> None:
    agent = await system.agent("a1", cpu=1, behaviour=lambda a: Outcome(hold=True))
    wide = "".join(f"  - name: s{i:02}\n    command: [x]\n    resources: {{cpu: 1}}\n" for i in range(20))
    await system.apply(f"kind: Pipeline\nname: wide\nsteps:\n{wide}")
    await system.apply(
        "kind: Pipeline\nname: small\nsteps:\n  - name: only\n    command: [x]\n    resources: {cpu: 1}\n"
    )
    await system.start_run("small")  # takes the agent's one CPU until finished
    await system.wait_for(lambda: len(agent.running) == 1, what="the agent busy")
    first = (await system.start_run("wide"))["run_id"]
    second = (await system.start_run("small"))["run_id"]
    await system.wait_step(first, "s19", lambda step: step["waiting_reason"])
    await system.wait_step(second, "only", lambda step: step["waiting_reason"])

    # One slot frees at a time: the runs take turns, the older first; the 20 steps queued before
    # the small run's one do not all go ahead of it.
    for count in range(2, 6):
        (running,) = agent.running
        await agent.finish(running)
        await system.wait_for(lambda n=count: len(agent.assignments) == n, what=f"assignment {count}")
    assigned = [(str(a.run_id), a.step) for a in agent.assignments[1:]]
    assert assigned == [(first, "s00"), (second, "only"), (first, "s01"), (first, "s02")]
