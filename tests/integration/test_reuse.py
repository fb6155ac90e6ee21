"""Reuse against real PostgreSQL and NATS, with fake agents that create their outputs: a step re-runs
only when its code, parameters or inputs changed, and every decision says why."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runners.protocol import Assignment
from tests.integration.fake_agent import FakeAgent, Harness, Outcome, harness

PIPELINE = """
kind: Pipeline
name: flow
params:
  day: {type: string}
  model: {type: string, default: small}
steps:
  - name: prep
    command: [prep, --day, "${params.day}", --in, "${inputs.raw}", --out, "${outputs.features}"]
    inputs:
      raw: {datastore: landing, path: "days/${params.day}"}
    outputs: [features]
  - name: score
    command: [score, "${inputs.features}", --model, "${params.model}", --out, "${outputs.scores}"]
    inputs:
      features: ${steps.prep.outputs.features}
    outputs: [scores]
  - name: report
    command: [report, "${inputs.scores}"]
    inputs:
      scores: ${steps.score.outputs.scores}
    REPORT_REUSE
"""

LANDING = """
kind: Datastore
name: landing
type: local
path: {path}
"""


def pipeline(report_reuse: str = "") -> str:
    return PIPELINE.replace("REPORT_REUSE", report_reuse)


def creates_outputs(assignment: Assignment) -> Outcome:
    for path in assignment.outputs.values():
        os.makedirs(path, exist_ok=True)
    return Outcome()


@pytest.fixture
async def system(pool, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    landing = tmp_path / "landing"
    (landing / "days" / "mon").mkdir(parents=True)
    (landing / "days" / "mon" / "a.csv").write_text("id\n1\n")
    async with harness(pool, nats_url, tmp_path) as system:
        await system.apply(LANDING.format(path=landing))
        await system.apply(pipeline())
        yield system


@pytest.fixture
async def agent(system: Harness) -> FakeAgent:
    return await system.agent("a1", behaviour=creates_outputs)


async def run(system: Harness, status: str = "succeeded", **body) -> dict:
    body.setdefault("params", {"day": "mon"})
    created = await system.start_run("flow", **body)
    return await system.wait_run(created["run_id"], status)


def steps_of(run: dict) -> dict[str, dict]:
    return {step["name"]: step for step in run["steps"]}


def dispatched(agent: FakeAgent, run: dict) -> list[str]:
    return [assignment.step for assignment in agent.assignments if assignment.run_id == run["id"]]


async def test_an_unchanged_rerun_reuses_every_step_and_dispatches_none(
    system: Harness, agent: FakeAgent
) -> None:
    first = await run(system)
    assert dispatched(agent, first) == ["prep", "score", "report"]
    assert {step["reuse"]["reason"] for step in first["steps"]} == {"first run of this step"}

    second = await run(system)
    assert dispatched(agent, second) == []
    steps = steps_of(second)
    assert [step["status"] for step in second["steps"]] == ["reused"] * 3
    assert all(step["reused"] for step in second["steps"])
    old = steps_of(first)
    for name, step in steps.items():
        assert step["fingerprint"] == old[name]["fingerprint"]
        assert step["outputs"] == old[name]["outputs"]
        assert step["reuse"]["outcome"] == "reused"
        assert step["reuse"]["reused_from"] == {
            "run_id": first["id"],
            "step": name,
            "step_run_id": step["reuse"]["reused_from"]["step_run_id"],
        }
        assert first["id"] in step["reuse"]["reason"]
    assert second["finished_at"] is not None
    assert system.client is not None
    logs = await system.client.get(f"/api/v1/runs/{second['id']}/steps/score/logs")
    assert logs.status == 404
    message = (await logs.json())["error"]["message"]
    assert message.endswith(f"was reused, not run: its log is that of step score of run {first['id']}")


async def test_a_parameter_used_by_one_step_reruns_it_and_what_follows(
    system: Harness, agent: FakeAgent
) -> None:
    first = await run(system)
    second = await run(system, params={"day": "mon", "model": "large"})
    assert dispatched(agent, second) == ["score", "report"]
    steps = steps_of(second)
    assert steps["prep"]["status"] == "reused"
    assert steps["score"]["reuse"]["changed"] == ["parameter model"]
    assert steps["score"]["reuse"]["reason"] == f"changed since run {first['id']}: parameter model"
    assert steps["report"]["reuse"]["changed"] == ["input scores"]
    # The re-run step reads the reused step's outputs where the first run wrote them.
    score = next(a for a in agent.assignments if a.run_id == second["id"] and a.step == "score")
    assert score.argv[1] == steps_of(first)["prep"]["outputs"]["features"]
    assert score.argv[1].endswith(f"runs/{first['id']}/prep/features")


async def test_changed_data_in_a_datastore_input_reruns_the_steps_that_read_it(
    system: Harness, agent: FakeAgent, tmp_path: Path
) -> None:
    await run(system)
    (tmp_path / "landing" / "days" / "mon" / "b.csv").write_text("id\n2\n")
    second = await run(system)
    assert dispatched(agent, second) == ["prep", "score", "report"]
    steps = steps_of(second)
    assert steps["prep"]["reuse"]["changed"] == ["input raw"]
    assert steps["score"]["reuse"]["changed"] == ["input features"]
    third = await run(system)  # unchanged since the second
    assert dispatched(agent, third) == []


async def test_no_reuse_reruns_everything_and_says_so(system: Harness, agent: FakeAgent) -> None:
    await run(system)
    second = await run(system, reuse=False)
    assert dispatched(agent, second) == ["prep", "score", "report"]
    assert second["reuse"] is False
    for step in second["steps"]:
        assert step["reuse"]["outcome"] == "off"
        assert step["reuse"]["reason"] == "the run asked for no reuse (--no-reuse)"


async def test_a_deleted_output_means_the_step_runs_again(system: Harness, agent: FakeAgent) -> None:
    first = await run(system)
    shutil.rmtree(steps_of(first)["score"]["outputs"]["scores"])
    second = await run(system)
    assert dispatched(agent, second) == ["score"]
    steps = steps_of(second)
    assert steps["score"]["reuse"]["reason"] == (
        f"unchanged since run {first['id']}, but the outputs of its step score are gone"
    )
    # report's fingerprint did not change (score's did not): it is reused, from the first run.
    assert steps["report"]["status"] == "reused"
    assert steps["score"]["outputs"]["scores"].endswith(f"runs/{second['id']}/score/scores")


async def test_reuse_false_on_a_step_always_runs_it(system: Harness, agent: FakeAgent) -> None:
    await system.apply(pipeline(report_reuse="reuse: false"))
    await run(system)
    second = await run(system)
    assert dispatched(agent, second) == ["report"]
    assert steps_of(second)["report"]["reuse"] == {
        "outcome": "off",
        "reused_from": None,
        "changed": [],
        "reason": "reuse: false on this step",
    }


async def test_a_failed_step_is_not_reused(system: Harness) -> None:
    failing = await system.agent("a1", behaviour=lambda a: Outcome(status="failed", exit_code=1))
    first = await run(system, status="failed")
    await failing.stop()
    agent = await system.agent("a2", behaviour=creates_outputs)
    second = await run(system)
    assert dispatched(agent, second) == ["prep", "score", "report"]
    assert steps_of(second)["prep"]["reuse"]["reason"] == (
        f"unchanged since run {first['id']}, which has not succeeded (step failed)"
    )


async def hold_one_run(system: Harness, agent: FakeAgent, **params: str) -> tuple[str, FakeAgent]:
    """A run of ``params`` held behind a running one (``max_active_runs: 1``): (its id, the agent)."""
    limited = pipeline().replace(
        "name: flow\n", "name: flow\nconcurrency: {max_active_runs: 1, on_limit: queue}\n"
    )
    await system.apply(limited)
    agent.behaviour = lambda assignment: Outcome(hold=True)
    blocker = await system.start_run("flow", params={"day": "tue"})
    await system.wait_step(blocker["run_id"], "prep", lambda step: step["status"] == "running")
    held = await system.start_run("flow", params=params)
    run = await system.get_run(held["run_id"])
    assert run["held"] is True
    assert {step["status"] for step in run["steps"]} == {"pending"}
    return held["run_id"], agent


async def release(agent: FakeAgent) -> None:
    agent.behaviour = creates_outputs
    for assignment in list(agent.running.values()):
        await agent.finish(assignment.attempt_id, Outcome(status="failed", exit_code=1))


async def test_a_held_run_is_planned_when_admitted(system: Harness, agent: FakeAgent) -> None:
    first = await run(system)
    held, agent = await hold_one_run(system, agent, day="mon", model="large")
    await release(agent)
    done = await system.wait_run(held, "succeeded")
    assert [step["status"] for step in done["steps"]] == ["reused", "succeeded", "succeeded"]
    assert steps_of(done)["prep"]["reuse"]["reused_from"]["run_id"] == first["id"]


async def test_outputs_deleted_while_a_run_was_held_are_made_again(system: Harness, agent: FakeAgent) -> None:
    first = await run(system)
    held, agent = await hold_one_run(system, agent, day="mon", model="large")
    shutil.rmtree(steps_of(first)["prep"]["outputs"]["features"])
    await release(agent)
    done = await system.wait_run(held, "succeeded")
    steps = steps_of(done)
    assert [step["status"] for step in done["steps"]] == ["succeeded"] * 3
    assert steps["prep"]["reuse"]["reason"].endswith("but the outputs of its step prep are gone")


async def test_a_held_run_with_nothing_left_to_do_ends_when_admitted(
    system: Harness, agent: FakeAgent
) -> None:
    """A run of the same params as the held run before it: by its turn, everything is made."""
    await run(system)
    earlier, agent = await hold_one_run(system, agent, day="mon", model="large")
    later = (await system.start_run("flow", params={"day": "mon", "model": "large"}))["run_id"]
    await release(agent)
    await system.wait_run(earlier, "succeeded")
    done = await system.wait_run(later, "succeeded")
    assert [step["status"] for step in done["steps"]] == ["reused"] * 3
    assert dispatched(agent, done) == []
    assert {step["reuse"]["reused_from"]["run_id"] for step in done["steps"][1:]} == {earlier}


async def test_a_step_that_always_runs_makes_the_steps_below_it_run(
    system: Harness, agent: FakeAgent
) -> None:
    """A ``reuse: false`` step has side effects (it may fetch new data): what reads it runs again."""
    await system.apply(
        pipeline().replace("    outputs: [features]\n", "    outputs: [features]\n    reuse: false\n")
    )
    await run(system)
    second = await run(system)
    assert dispatched(agent, second) == ["prep", "score", "report"]
    assert steps_of(second)["score"]["reuse"]["changed"] == ["input features"]


async def test_an_input_the_daemon_cannot_see_is_never_reused(system: Harness, agent: FakeAgent) -> None:
    await run(system, params={"day": "sun"})  # no data for sunday: nothing at the path
    second = await run(system, params={"day": "sun"})
    assert dispatched(agent, second) == ["prep", "score", "report"]
    reason = steps_of(second)["prep"]["reuse"]["reason"]
    assert reason.startswith("the daemon cannot see an input's data: nothing at ")
    assert reason.endswith("days/sun (the datastore as the daemon sees it)")


async def test_a_parameter_cannot_lead_an_input_out_of_its_datastore(
    system: Harness, agent: FakeAgent
) -> None:
    failed = await run(system, status="failed", params={"day": "../../etc"})
    prep = steps_of(failed)["prep"]
    assert "not inside datastore 'landing'" in prep["error"]
    assert "not inside datastore 'landing'" in prep["reuse"]["reason"]
    assert dispatched(agent, failed) == []


async def test_a_new_image_digest_reported_by_an_agent_is_a_change(system: Harness) -> None:
    await system.apply(
        "kind: Pipeline\nname: boxed\nsteps:\n  - name: only\n    image: example/img:1\n"
        "    command: [run]\n    outputs: [out]\n"
    )
    digest = "sha256:aaa"

    def reports_digest(assignment: Assignment) -> Outcome:
        creates_outputs(assignment)
        return Outcome(image_digest=digest)

    await system.agent("d1", executors=["docker"], behaviour=reports_digest)

    async def boxed(**body) -> dict:
        created = await system.start_run("boxed", **body)
        return steps_of(await system.wait_run(created["run_id"], "succeeded"))["only"]

    assert (await boxed())["status"] == "succeeded"  # no digest known yet: the agent reports aaa
    known = await boxed()
    assert known["status"] == "succeeded"
    assert known["reuse"]["changed"] == ["image"]  # the image now has a digest
    assert (await boxed())["status"] == "reused"
    digest = "sha256:bbb"  # the tag moved in the registry; an agent runs the new image
    assert (await boxed(reuse=False))["attempts"][0]["image_digest"] == "sha256:bbb"
    moved = await boxed()
    assert moved["status"] == "succeeded"
    assert moved["reuse"]["changed"] == ["image"]
    assert (await boxed())["status"] == "reused"
