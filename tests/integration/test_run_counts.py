"""Runs counted by the kind of trigger that made them, when this daemon has not seen the trigger's
events (it finishes a run after a restart): the kind is read from the store once, then remembered."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import REGISTRY

from daemon.metrics.runs import RunCounts
from daemon.store.runs import RunRecord
from tests.integration.fake_agent import harness

DOCUMENTS = """
kind: Pipeline
name: counted
steps:
  - name: only
    command: ["true"]
---
kind: Trigger
name: chained
pipeline: counted
on:
  run: {pipeline: counted, status: [failed]}
"""


def finished(trigger: str | None, status: str) -> RunRecord:
    now = datetime.now(UTC)
    return RunRecord(
        id=uuid.uuid4(),
        pipeline="counted",
        version=1,
        status=status,
        params={},
        reuse=True,
        trigger=trigger,
        event_id=None,
        idempotency_key=None,
        resolution="default",
        reason=None,
        held=False,
        created_at=now,
        started_at=now,
        finished_at=now,
    )


def count(kind: str, status: str) -> float:
    labels = {"pipeline": "counted", "trigger_kind": kind, "status": status}
    return REGISTRY.get_sample_value("sluice_runs_finished_total", labels) or 0.0


async def test_a_trigger_unseen_here_is_looked_up_and_a_deleted_one_is_unknown(
    pool, nats_url, tmp_path: Path
) -> None:
    async with harness(pool, nats_url, tmp_path) as system:
        await system.apply(DOCUMENTS)
    counts = RunCounts(pool)
    before = {kind: count(kind, "succeeded") for kind in ("run", "manual", "unknown")}
    await counts.finished(
        [
            finished("chained", "succeeded"),
            finished(None, "succeeded"),
            finished("deleted-since", "succeeded"),
        ]
    )
    await counts.finished([finished("chained", "running")])  # not over: not counted
    assert {kind: count(kind, "succeeded") - before[kind] for kind in before} == {
        "run": 1,
        "manual": 1,
        "unknown": 1,
    }
    cancelled = count("run", "cancelled")
    await pool.close()  # remembered: with no database, a look-up would make it "unknown"
    await counts.finished([finished("chained", "cancelled")])
    assert count("run", "cancelled") - cancelled == 1


async def test_every_pipeline_and_trigger_has_its_series_from_the_start(
    pool, nats_url, tmp_path: Path
) -> None:
    documents = DOCUMENTS.replace("counted", "primed").replace("name: chained", "name: primed-chain")
    async with harness(pool, nats_url, tmp_path) as system:
        await system.apply(documents)  # an apply primes what it added, on the daemon that took it
        for status in ("succeeded", "failed", "cancelled"):
            for kind in ("manual", "run"):
                labels = {"pipeline": "primed", "trigger_kind": kind, "status": status}
                assert REGISTRY.get_sample_value("sluice_runs_finished_total", labels) == 0.0, labels
        for outcome in ("run", "duplicate", "rejected", "skipped"):
            labels = {"trigger": "primed-chain", "outcome": outcome}
            assert REGISTRY.get_sample_value("sluice_trigger_events_total", labels) == 0.0, labels
