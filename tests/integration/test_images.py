"""Image digests that agents report when a step starts, against real PostgreSQL and NATS: each attempt
keeps its own, and the latest one per image reference is what the reuse planner reads."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.dispatch.transitions import Reported
from daemon.store.images import image_digests
from runners.protocol import StepFinished, StepStarted
from tests.integration.fake_agent import Harness, Outcome, harness

IMAGE = "example/img:1"
PIPELINES = f"""
kind: Pipeline
name: boxed
steps:
  - name: only
    image: {IMAGE}
    command: [x]
---
kind: Pipeline
name: plain
steps:
  - name: only
    command: [x]
"""


@pytest.fixture
async def system(pool, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(pool, nats_url, tmp_path) as system:
        await system.apply(PIPELINES)
        yield system


async def run_once(system: Harness, pipeline: str = "boxed") -> dict:
    """The attempt of a run of ``pipeline``'s only step, executed (reuse would skip a repeat)."""
    run_id = (await system.start_run(pipeline, reuse=False))["run_id"]
    run = await system.wait_run(run_id, "succeeded")
    (step,) = run["steps"]
    (attempt,) = step["attempts"]
    return attempt


async def test_a_reported_digest_is_kept_by_the_attempt_and_replaced_by_a_later_report(
    system: Harness,
) -> None:
    digest = "sha256:abc"
    await system.agent("a1", executors=["docker"], behaviour=lambda a: Outcome(image_digest=digest))

    first = await run_once(system)

    assert first["image_digest"] == "sha256:abc"
    assert await image_digests(system.pool, [IMAGE, "example/other:2"]) == {IMAGE: "sha256:abc"}

    digest = "sha256:def"  # the tag moved
    second = await run_once(system)

    assert second["image_digest"] == "sha256:def"
    assert await image_digests(system.pool, [IMAGE]) == {IMAGE: "sha256:def"}
    rows = await system.pool.fetch("SELECT image_digest FROM attempts ORDER BY id")
    assert [row["image_digest"] for row in rows] == ["sha256:abc", "sha256:def"]  # history stays


async def test_a_start_without_a_digest_records_none(system: Harness) -> None:
    await system.agent("a1", executors=["docker", "process"])

    boxed = await run_once(system)
    plain = await run_once(system, "plain")

    assert boxed["image_digest"] is None
    assert plain["image_digest"] is None
    assert await image_digests(system.pool, [IMAGE]) == {}
    assert await image_digests(system.pool, []) == {}


async def test_a_step_without_an_image_keeps_a_reported_digest_only_on_its_attempt(system: Harness) -> None:
    await system.agent("a1", behaviour=lambda a: Outcome(image_digest="sha256:odd"))

    attempt = await run_once(system, "plain")

    assert attempt["image_digest"] == "sha256:odd"
    assert await system.pool.fetchval("SELECT count(*) FROM images") == 0


async def test_in_one_batch_the_attempt_that_started_last_wins(system: Harness) -> None:
    agent = await system.agent("a1", executors=["docker"], behaviour=lambda a: Outcome(hold=True))

    async def keep(event) -> None:  # the agent's events reach the daemon only through this test
        pass

    agent.publish = keep  # type: ignore[method-assign]
    run_ids = [(await system.start_run("boxed", reuse=False))["run_id"] for _ in range(2)]
    await system.wait_for(lambda: len(agent.assignments) == 2, what="both assignments")
    first, second = sorted(agent.assignments, key=lambda assignment: run_ids.index(assignment.run_id))
    now = time.time()
    events = [
        Reported("a1", StepStarted(attempt_id=second.attempt_id, started_at=now, image_digest="sha256:new")),
        Reported(
            "a1", StepStarted(attempt_id=first.attempt_id, started_at=now - 5, image_digest="sha256:old")
        ),
        # A finished event makes this the batch's transaction path (locks, then starts, then ends).
        Reported(
            "a1", StepFinished(attempt_id=first.attempt_id, status="succeeded", exit_code=0, finished_at=now)
        ),
    ]

    applied = await system.scheduler.transitions.apply_events(events)

    assert applied.changed == [True, True, True]
    assert await image_digests(system.pool, [IMAGE]) == {IMAGE: "sha256:new"}
    digests = {
        run_id: (await system.get_run(run_id))["steps"][0]["attempts"][0]["image_digest"]
        for run_id in run_ids
    }
    assert digests == {run_ids[0]: "sha256:old", run_ids[1]: "sha256:new"}
