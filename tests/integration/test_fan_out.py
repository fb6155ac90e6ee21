"""A step that fans out, against real PostgreSQL and NATS with fake agents: its partitions are step
runs of their own, placed one by one, and the step ends with them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.store import lineage as lineage_store
from tests.integration.fake_agent import Harness, Outcome, harness
from triggers.base import TriggerEvent

SHARDS = """
kind: Pipeline
name: scoring
steps:
  - name: score
    command: [score, --shard, "${item}", --of, "3"]
    outputs: [scores]
    foreach: {shards: 3, allowed_failures: 1}
  - name: report
    command: [report, "${steps.score.outputs.scores}"]
"""


@pytest.fixture
async def system(pool, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(pool, nats_url, tmp_path) as system:
        yield system


async def test_shards_run_as_partitions_and_the_step_ends_with_them(system: Harness) -> None:
    def one_fails(assignment) -> Outcome:
        return Outcome(status="failed", exit_code=1) if assignment.step == "score[1]" else Outcome()

    agent = await system.agent("a1", datastores={"default": "/mnt/store"}, behaviour=one_fails)
    await system.apply(SHARDS)
    run_id = (await system.start_run("scoring"))["run_id"]
    run = await system.wait_run(run_id, "succeeded")
    by_step = {assignment.step: assignment for assignment in agent.assignments}
    assert set(by_step) == {"score[0]", "score[1]", "score[2]", "report"}
    assert by_step["score[2]"].argv == ["score", "--shard", "2", "--of", "3"]
    assert by_step["score[2]"].outputs == {"scores": f"/mnt/store/runs/{run_id}/score/scores/part-00002"}
    assert by_step["report"].argv == ["report", f"/mnt/store/runs/{run_id}/score/scores"]
    steps = {step["name"]: step for step in run["steps"]}
    assert steps["score"]["status"] == "succeeded"  # one failed partition is tolerated, and said
    assert steps["score"]["warning"] == "1 of 3 partitions failed (allowed_failures 1): score[1]"
    assert (steps["score[1]"]["status"], steps["score[1]"]["partition_of"]) == ("failed", "score")


FILES = """
kind: Pipeline
name: batch
steps:
  - name: score
    command: [score, --out, "${outputs.scores}", "${item.files}"]
    inputs:
      raw: {datastore: landing, path: day}
    outputs: [scores]
    foreach: {files: {input: raw, pattern: "*.csv", per: 10}}
"""


def creates_outputs(assignment) -> Outcome:
    for path in assignment.outputs.values():
        os.makedirs(path, exist_ok=True)
    return Outcome()


async def test_a_failure_beyond_allowed_failures_fails_the_step_and_the_run(system: Harness) -> None:
    await system.agent(
        "a1", behaviour=lambda a: Outcome(status="failed", exit_code=1) if a.step == "score[1]" else Outcome()
    )
    await system.apply(SHARDS.replace(", allowed_failures: 1", ""))
    run = await system.wait_run((await system.start_run("scoring"))["run_id"], "failed")
    steps = {step["name"]: step for step in run["steps"]}
    assert (steps["score"]["status"], steps["report"]["status"]) == ("failed", "skipped")


async def test_new_files_run_only_the_partitions_they_land_in(system: Harness, tmp_path: Path) -> None:
    day = tmp_path / "landing" / "day"
    day.mkdir(parents=True)
    for number in range(25):
        (day / f"part-{number:03d}.csv").write_text(f"rows {number}\n")
    (day / "notes.txt").write_text("not scored")
    agent = await system.agent("a1", behaviour=creates_outputs)
    await system.apply(f"kind: Datastore\nname: landing\ntype: local\npath: {tmp_path / 'landing'}\n")
    await system.apply(FILES)
    await system.wait_run((await system.start_run("batch"))["run_id"], "succeeded")
    by_step = {assignment.step: assignment for assignment in agent.assignments}
    assert sorted(by_step) == ["score[0]", "score[1]", "score[2]"]
    files = [str(day / f"part-{number:03d}.csv") for number in range(20, 25)]
    assert by_step["score[2]"].argv[3:] == files  # one argv item per file, never through a shell

    for number in range(25, 30):
        (day / f"part-{number:03d}.csv").write_text(f"rows {number}\n")
    agent.assignments.clear()
    second = await system.wait_run((await system.start_run("batch"))["run_id"], "succeeded")
    assert [assignment.step for assignment in agent.assignments] == ["score[3]"]
    steps = {step["name"]: step for step in second["steps"]}
    assert [steps[f"score[{index}]"]["status"] for index in range(4)] == ["reused"] * 3 + ["succeeded"]
    assert steps["score"]["status"] == "succeeded"
    assert steps["score"]["reuse"]["reason"] == "fans out over 4 partitions: 3 reused, 1 to run"
    assert steps["score[0]"]["reuse"]["reason"].startswith("nothing changed: the outputs of step score[0]")
    assert steps["score[3]"]["reuse"]["reason"] == "first run of this step"
    # Downstream, the step's output holds every partition's part: reused ones linked from the first run.
    assert system.scheduler is not None
    root = Path(system.scheduler.datastores.paths["default"])
    parts = root / "runs" / second["id"] / "score" / "scores"
    assert sorted(path.name for path in parts.iterdir()) == [f"part-{index:05d}" for index in range(4)]
    assert (parts / "part-00000").is_symlink()
    assert (parts / "part-00000").is_dir()

    agent.assignments.clear()  # nothing changed since: every partition is reused, the run over at once
    third = await system.start_run("batch")
    assert third["status"] == "succeeded"
    assert agent.assignments == []


async def test_no_file_to_fan_out_over_is_nothing_to_do(system: Harness, tmp_path: Path) -> None:
    (tmp_path / "landing" / "day").mkdir(parents=True)
    await system.agent("a1", behaviour=creates_outputs)
    await system.apply(f"kind: Datastore\nname: landing\ntype: local\npath: {tmp_path / 'landing'}\n")
    await system.apply(FILES)
    run = await system.wait_run((await system.start_run("batch"))["run_id"], "succeeded")
    assert [(step["name"], step["status"]) for step in run["steps"]] == [("score", "succeeded")]


async def test_max_parallel_bounds_the_partitions_running_at_once(system: Harness) -> None:
    agent = await system.agent("a1", cpu=16, behaviour=lambda assignment: Outcome(hold=True))
    await system.apply(SHARDS.replace("{shards: 3, allowed_failures: 1}", "{shards: 5, max_parallel: 2}"))
    run_id = (await system.start_run("scoring"))["run_id"]
    await system.wait_for(lambda: len(agent.assignments) == 2, what="two partitions assigned")
    await asyncio.sleep(0.3)
    assert len(agent.assignments) == 2  # the others wait for a turn
    waiting = await system.wait_step(run_id, "score[4]", lambda step: step["waiting_reason"] is not None)
    assert "max_parallel 2" in waiting["waiting_reason"]
    await agent.finish(agent.assignments[0].attempt_id)
    await system.wait_for(lambda: len(agent.assignments) == 3, what="a third partition once one ended")
    for assignment in agent.assignments[1:]:
        await agent.finish(assignment.attempt_id)
    await system.wait_for(lambda: len(agent.assignments) == 5, what="every partition, two at a time")
    for assignment in agent.assignments[3:]:
        await agent.finish(assignment.attempt_id)
    await system.wait_for(lambda: len(agent.assignments) == 6, what="report")
    await agent.finish(agent.assignments[5].attempt_id)
    await system.wait_run(run_id, "succeeded")


async def test_a_held_run_gets_its_partitions_when_it_is_admitted(system: Harness) -> None:
    agent = await system.agent("a1", cpu=16, behaviour=lambda assignment: Outcome(hold=True))
    limited = SHARDS.replace("name: scoring\n", "name: scoring\nconcurrency: {max_active_runs: 1}\n")
    await system.apply(limited)
    first = (await system.start_run("scoring"))["run_id"]
    second = await system.start_run("scoring")
    assert second["held"] is True
    held = {step["name"] for step in (await system.get_run(second["run_id"]))["steps"]}
    assert held == {"score", "report"}  # its partitions are planned when it is admitted
    await system.wait_for(lambda: len(agent.assignments) == 3, what="the first run's partitions")
    for assignment in list(agent.assignments):
        await agent.finish(assignment.attempt_id)
    await system.wait_for(lambda: len(agent.assignments) == 4, what="the first run's report")
    await agent.finish(agent.assignments[3].attempt_id)
    await system.wait_run(first, "succeeded")
    await system.wait_for(lambda: len(agent.assignments) == 7, what="the admitted run's partitions")
    admitted = {a.step for a in agent.assignments[4:] if a.run_id == second["run_id"]}
    assert admitted == {"score[0]", "score[1]", "score[2]"}


async def test_an_input_that_cannot_be_listed_is_a_clear_error(system: Harness, tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    await system.apply(f"kind: Datastore\nname: landing\ntype: local\npath: {tmp_path / 'landing'}\n")
    templated = FILES.replace("path: day", 'path: "${params.day}"').replace(
        "name: batch\n", "name: batch\nparams:\n  day: {type: string}\n"
    )
    await system.apply(templated)
    body = await system.start_run("batch", expect=422, params={"day": "../elsewhere"})
    assert body["error"]["message"] == (
        "step score cannot fan out: path '../elsewhere' is not inside datastore 'landing'"
    )


async def test_an_event_whose_run_cannot_fan_out_is_rejected_with_why(
    system: Harness, tmp_path: Path
) -> None:
    (tmp_path / "landing").mkdir()
    await system.apply(f"kind: Datastore\nname: landing\ntype: local\npath: {tmp_path / 'landing'}\n")
    await system.apply(
        FILES.replace("path: day", 'path: "${params.day}"').replace(
            "name: batch\n", "name: batch\nparams:\n  day: {type: string}\n"
        )
    )
    await system.apply('kind: Pipeline\nname: upstream\nsteps:\n  - name: only\n    command: ["true"]\n')
    await system.apply(
        "kind: Trigger\nname: t1\npipeline: batch\non:\n  run: {pipeline: upstream, status: [succeeded]}\n"
        'params:\n  day: "${event.data.day}"\n'
    )
    assert system.scheduler is not None
    assert system.scheduler.triggering is not None
    result = await system.scheduler.triggering.sink(
        TriggerEvent(trigger="t1", dedupe_key="k1", fields={"data": {"day": "../elsewhere"}})
    )
    assert (result.outcome, result.run_id) == ("rejected", None)
    assert result.reason == "step score cannot fan out: path '../elsewhere' is not inside datastore 'landing'"


async def test_a_partition_whose_assignment_is_hopeless_fails_alone(system: Harness) -> None:
    await system.agent("a1", refuse="malformed", permanent=True)
    await system.apply(SHARDS)
    run = await system.wait_run((await system.start_run("scoring"))["run_id"], "failed")
    steps = {step["name"]: step for step in run["steps"]}
    assert [steps[f"score[{index}]"]["status"] for index in range(3)] == ["failed"] * 3
    assert "refused its assignment: malformed" in steps["score[0]"]["attempts"][0]["error"]
    assert (steps["score"]["status"], steps["report"]["status"]) == ("failed", "skipped")


async def test_a_partition_is_a_reader_only_of_its_own_files(system: Harness, tmp_path: Path) -> None:
    day = tmp_path / "landing" / "day"
    day.mkdir(parents=True)
    for number in range(12):
        (day / f"part-{number:03d}.csv").write_text(f"rows {number}\n")
    await system.agent("a1", behaviour=creates_outputs)
    await system.apply(f"kind: Datastore\nname: landing\ntype: local\npath: {tmp_path / 'landing'}\n")
    await system.apply(FILES)
    await system.wait_run((await system.start_run("batch"))["run_id"], "succeeded")

    async def readers_of(path: str) -> list[str]:
        return sorted(
            reader.step for reader in await lineage_store.readers(system.pool, "landing", path, limit=10)
        )

    # Partition 0 has files 000-009, partition 1 files 010-011; the step that fans out reads none itself.
    assert await readers_of("day/part-011.csv") == ["score[1]"]
    assert await readers_of("day/part-003.csv") == ["score[0]"]
    assert await readers_of("day") == ["score[0]", "score[1]"]
    assert await readers_of("day/part-01") == []  # no file of that name: a prefix is not a path
    assert await readers_of("day/part-012.csv") == []
