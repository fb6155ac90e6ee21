"""Triggers run by the daemon's trigger manager against real PostgreSQL and NATS: applying a changed
trigger, pausing, resuming and deleting take effect without a restart; the run source chains
pipelines and catches up on what ended while nobody watched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.fake_agent import Harness, harness

PIPELINES = """
kind: Pipeline
name: upstream
steps:
  - name: only
    command: ["true"]
---
kind: Pipeline
name: downstream
params:
  parent: {type: string}
  at: {type: string, default: ""}
steps:
  - name: only
    command: [down, "${params.parent}"]
"""

CHAIN = """
kind: Trigger
name: chain
pipeline: downstream
on:
  run: {pipeline: upstream, status: [succeeded]}
params:
  parent: "PARENT${event.run.id}"
"""


@pytest.fixture
async def system(pool, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(pool, nats_url, tmp_path) as system:
        await system.apply(PIPELINES)
        await system.agent("a1")
        yield system


async def downstream_runs(system: Harness, trigger: str = "chain") -> list[dict]:
    rows = await system.pool.fetch(
        "SELECT id, params, trigger FROM runs WHERE pipeline = 'downstream' AND trigger = $1 "
        "ORDER BY created_at",
        trigger,
    )
    return [dict(row) for row in rows]


async def finish_upstream(system: Harness) -> str:
    run_id = (await system.start_run("upstream"))["run_id"]
    await system.wait_run(run_id, "succeeded")
    return run_id


async def wait_downstream(system: Harness, count: int, trigger: str = "chain") -> list[dict]:
    found: list[dict] = []

    async def enough() -> bool:
        nonlocal found
        found = await downstream_runs(system, trigger)
        return len(found) >= count

    await system.wait_for(enough, what=f"{count} downstream runs", last=lambda: found)
    return found


async def trigger_json(system: Harness, name: str) -> dict:
    assert system.client is not None
    response = await system.client.get(f"/api/v1/triggers/{name}")
    assert response.status == 200, await response.text()
    return await response.json()


async def post(system: Harness, path: str, expect: int = 200) -> dict:
    assert system.client is not None
    response = await system.client.post(path)
    assert response.status == expect, await response.text()
    return await response.json()


async def test_run_trigger_chains_and_follows_changes_without_restart(system: Harness) -> None:
    await system.apply(CHAIN)
    status = (await trigger_json(system, "chain"))["status"]
    assert status["active"] is True
    assert status["subjects"] == ["sluice.runs.upstream.succeeded"]

    first = await finish_upstream(system)
    [run] = await wait_downstream(system, 1)
    assert run["params"]["parent"] == f"PARENT{first}"

    # Changed params apply to the next event.
    await system.apply(CHAIN.replace("PARENT", "CHANGED"))
    second = await finish_upstream(system)
    runs = await wait_downstream(system, 2)
    assert runs[1]["params"]["parent"] == f"CHANGED{second}"

    # Paused: nothing happens; the trigger says so.
    paused = await post(system, "/api/v1/triggers/chain/pause")
    assert paused["paused"] is True
    assert paused["status"]["active"] is False
    during_pause = await finish_upstream(system)
    await asyncio.sleep(0.5)
    assert len(await downstream_runs(system)) == 2

    # Resumed: the run source catches up on what ended while it was paused, once.
    await post(system, "/api/v1/triggers/chain/resume")
    runs = await wait_downstream(system, 3)
    assert runs[2]["params"]["parent"] == f"CHANGED{during_pause}"
    fourth = await finish_upstream(system)
    runs = await wait_downstream(system, 4)
    assert runs[3]["params"]["parent"] == f"CHANGED{fourth}"

    # Deleted: no more events, and its status is gone.
    assert system.client is not None
    response = await system.client.delete("/api/v1/triggers/chain")
    assert response.status == 200
    await finish_upstream(system)
    await asyncio.sleep(0.5)
    assert len(await downstream_runs(system)) == 4
    assert system.scheduler is not None
    assert system.scheduler.triggering is not None
    assert system.scheduler.triggering.status("chain") == {}


async def test_run_trigger_ignores_other_statuses_and_runs_before_it(system: Harness) -> None:
    before = await finish_upstream(system)
    await system.apply(CHAIN.replace("[succeeded]", "[failed]"))
    await finish_upstream(system)
    await asyncio.sleep(0.5)
    assert await downstream_runs(system) == []
    assert before  # a run that ended before the trigger existed never counts


async def test_run_trigger_catches_up_after_a_restart(system: Harness) -> None:
    await system.apply(CHAIN)
    first = await finish_upstream(system)
    await wait_downstream(system, 1)
    # A run that ends while the daemon is down (its end written by hand: nobody announces it).
    pending = (await system.start_run("upstream"))["run_id"]
    await system.stop_daemon()
    await system.pool.execute(
        "UPDATE runs SET status = 'succeeded', finished_at = now() WHERE id = $1", pending
    )
    await system.start(fresh_stream=False)
    runs = await wait_downstream(system, 2)
    assert [run["params"]["parent"] for run in runs] == [f"PARENT{first}", f"PARENT{pending}"]
    await asyncio.sleep(0.3)
    assert len(await downstream_runs(system)) == 2  # the catch-up overlapped nothing twice


CRON = """
kind: Trigger
name: ticker
pipeline: downstream
on:
  cron: "* * * * * *"
  catchup: none
params:
  parent: "tick"
  at: "${event.scheduled_time}"
"""


async def test_cron_trigger_pause_resume_change_delete(system: Harness) -> None:
    await system.apply(CRON)
    runs = await wait_downstream(system, 2, trigger="ticker")
    assert runs[0]["params"]["at"] != runs[1]["params"]["at"]
    assert (await trigger_json(system, "ticker"))["status"].get("next_fire")

    await post(system, "/api/v1/triggers/ticker/pause")
    await asyncio.sleep(0.2)  # an event already on its way may still land
    count = len(await downstream_runs(system, "ticker"))
    await asyncio.sleep(1.5)
    assert len(await downstream_runs(system, "ticker")) == count

    await post(system, "/api/v1/triggers/ticker/resume")
    await wait_downstream(system, count + 1, trigger="ticker")

    await system.apply(CRON.replace('parent: "tick"', 'parent: "tock"'))
    await asyncio.sleep(1.2)
    latest = (await downstream_runs(system, "ticker"))[-1]
    assert latest["params"]["parent"] == "tock"

    assert system.client is not None
    assert (await system.client.delete("/api/v1/triggers/ticker")).status == 200
    await asyncio.sleep(0.2)
    count = len(await downstream_runs(system, "ticker"))
    await asyncio.sleep(1.5)
    assert len(await downstream_runs(system, "ticker")) == count
