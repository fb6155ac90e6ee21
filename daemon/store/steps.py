"""Step runs: the step record with its attempts, the statuses a step moves through after its run was
created (the state machine's decisions, an attempt's result), and why a ready step waits. Guards and lock
order: :mod:`daemon.store.runs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from daemon.rules.partitions import Partition, partition_from_item
from daemon.rules.states import FINAL_STEP
from daemon.store.attempts import AttemptRecord, attempts_by_step
from daemon.store.db import Db, iso
from daemon.store.runs import ACTIVE
from daemon.store.sql import values_list

_FINAL_STEP = values_list(sorted(FINAL_STEP))


@dataclass(frozen=True, slots=True)
class StepRunRecord:
    id: int
    run_id: UUID
    name: str
    status: str
    fingerprint: str | None
    reused_from: int | None
    outputs: dict[str, str]
    metrics: list[dict[str, Any]]
    attempts_made: int
    waiting_reason: str | None
    explanation: dict[str, Any] | None
    ready_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    partition_of: str | None = None
    partition: int | None = None
    item: Any = None
    warning: str | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: asyncpg.Record, attempts: list[AttemptRecord] | None = None) -> StepRunRecord:
        return cls(
            id=row["id"],
            run_id=row["run_id"],
            name=row["name"],
            status=row["status"],
            fingerprint=row["fingerprint"],
            reused_from=row["reused_from"],
            outputs=row["outputs"],
            metrics=row["metrics"],
            attempts_made=row["attempts_made"],
            waiting_reason=row["waiting_reason"],
            explanation=row["explanation"],
            ready_at=row["ready_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            partition_of=row["partition_of"],
            partition=row["partition"],
            item=row["item"],
            warning=row["warning"],
            attempts=attempts or [],
        )

    def to_json(self) -> dict[str, Any]:
        """The contract's step shape; ``waiting_reason`` says why a ready step is not placed yet."""
        latest = self.attempts[-1] if self.attempts else None
        return {
            "name": self.name,
            "status": self.status,
            "reused": self.status == "reused",
            "fingerprint": self.fingerprint,
            # Why the step was reused or executed (``daemon.rules.reuse``); None for runs from before reuse.
            "reuse": self.explanation,
            "outputs": self.outputs,
            "metrics": self.metrics,
            "attempts": [attempt.to_json() for attempt in self.attempts],
            "agent": latest.agent_id if latest else None,
            "waiting_reason": self.waiting_reason if self.status == "ready" else None,
            # A step failed without an attempt (it could not be rendered) keeps why in the same column.
            "error": self.waiting_reason if self.status == "failed" else None,
            "ready_at": iso(self.ready_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            **({} if self.warning is None else {"warning": self.warning}),
            **(
                {}
                if self.partition_of is None
                else {"partition_of": self.partition_of, "partition": self.partition, "item": self.item}
            ),
        }


_STEP_COLUMNS = (
    "id, run_id, name, status, fingerprint, reused_from, outputs, metrics, attempts_made, waiting_reason, "
    "explanation, ready_at, started_at, finished_at, partition_of, partition, item, warning"
)


@dataclass(frozen=True, slots=True)
class NewStep:
    id: int
    name: str
    status: str
    attempt_id: int | None = None
    """The first attempt of a step placed as its run was created (status ``dispatched``)."""


async def reused_steps(db: Db, run_id: UUID) -> dict[str, tuple[str, str]]:
    """The run's reused steps -> (run id, step) whose outputs each links."""
    rows = await db.fetch(
        """
        SELECT name, explanation -> 'reused_from' ->> 'run_id' AS origin_run,
               explanation -> 'reused_from' ->> 'step' AS origin_step
        FROM step_runs WHERE run_id = $1 AND status = 'reused'
        """,
        run_id,
    )
    return {row["name"]: (row["origin_run"], row["origin_step"]) for row in rows}


async def partitions_of_run(db: Db, run_id: UUID) -> dict[str, Partition]:
    """The run's partitions of foreach steps, by step run name (``score[3]``)."""
    rows = await db.fetch(
        "SELECT name, partition, item FROM step_runs WHERE run_id = $1 AND partition_of IS NOT NULL", run_id
    )
    return {row["name"]: partition_from_item(row["partition"], row["item"]) for row in rows}


async def get_steps(db: Db, run_id: UUID) -> list[StepRunRecord]:
    """The run's steps in pipeline order (insertion order), each with its attempts by number."""
    steps = await db.fetch(f"SELECT {_STEP_COLUMNS} FROM step_runs WHERE run_id = $1 ORDER BY id", run_id)
    attempts = await attempts_by_step(db, run_id)
    return [StepRunRecord.from_row(row, attempts.get(row["id"], [])) for row in steps]


async def get_step(db: Db, run_id: UUID, name: str) -> StepRunRecord | None:
    row = await db.fetchrow(
        f"SELECT {_STEP_COLUMNS} FROM step_runs WHERE run_id = $1 AND name = $2", run_id, name
    )
    if row is None:
        return None
    attempts = await attempts_by_step(db, run_id, row["id"])
    return StepRunRecord.from_row(row, attempts.get(row["id"], []))


async def set_step_statuses(
    conn: asyncpg.Connection, changes: Mapping[int, str], *, error: str | None = None
) -> list[NewStep]:
    """Moves steps (step run id -> status) to new statuses (ready, skipped, cancelled …): a ready one
    gets ready_at, a final one finished_at, a failed one ``error`` as its reason. Steps already in
    their new status are left out of the result."""
    if not changes:
        return []
    rows = await conn.fetch(
        f"""
        UPDATE step_runs s SET status = x.status,
            ready_at = CASE WHEN x.status = 'ready' THEN now() ELSE s.ready_at END,
            finished_at = CASE WHEN x.status IN {_FINAL_STEP} THEN now() ELSE s.finished_at END,
            waiting_reason = CASE WHEN x.status = 'failed' THEN $3 ELSE NULL END
        FROM unnest($1::bigint[], $2::text[]) AS x(step_id, status)
        WHERE s.id = x.step_id AND s.status <> x.status
        RETURNING s.id, s.name, s.status
        """,
        list(changes),
        list(changes.values()),
        error,
    )
    return [NewStep(row["id"], row["name"], row["status"]) for row in rows]


@dataclass(frozen=True, slots=True)
class StepResult:
    """What an attempt's end did to its step (from :func:`daemon.rules.states.after_attempt`)."""

    step_run_id: int
    status: str
    outputs: Mapping[str, str]
    metrics: Sequence[Mapping[str, Any]]
    counts_as_failure: bool
    retry_in_s: float | None
    error: str | None


async def record_step_results(conn: asyncpg.Connection, results: Sequence[StepResult]) -> None:
    if not results:
        return
    encode = msgspec.json.encode
    await conn.execute(
        """
        UPDATE step_runs s SET status = x.outcome, outputs = x.outs::jsonb, metrics = x.measured::jsonb,
            attempts_made = s.attempts_made + CASE WHEN x.counts THEN 1 ELSE 0 END,
            ready_at = CASE WHEN x.outcome = 'ready' THEN now() + make_interval(secs => x.retry_in)
                       ELSE s.ready_at END,
            finished_at = CASE WHEN x.outcome = 'ready' THEN NULL ELSE now() END,
            waiting_reason = CASE WHEN x.outcome = 'failed' THEN x.message ELSE NULL END
        FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::float8[], $7::text[])
            AS x(step_id, outcome, outs, measured, counts, retry_in, message)
        WHERE s.id = x.step_id
        """,
        [result.step_run_id for result in results],
        [result.status for result in results],
        [encode(dict(result.outputs)).decode() for result in results],
        [encode(list(result.metrics)).decode() for result in results],
        [result.counts_as_failure for result in results],
        [result.retry_in_s or 0.0 for result in results],
        [result.error for result in results],
    )


@dataclass(frozen=True, slots=True)
class ReadyRow:
    step_run_id: int
    run_id: UUID
    name: str
    ready_at: datetime | None
    waiting_reason: str | None


async def ready_steps(db: Db) -> list[ReadyRow]:
    """Every ready step of an active, admitted run, by the time it became (or becomes) ready."""
    rows = await db.fetch(
        f"""
        SELECT s.id, s.run_id, s.name, s.ready_at, s.waiting_reason FROM step_runs s
        JOIN runs r ON r.id = s.run_id
        WHERE s.status = 'ready' AND r.status IN {ACTIVE} AND NOT r.held
        ORDER BY s.ready_at NULLS FIRST, s.id
        """
    )
    return [
        ReadyRow(row["id"], row["run_id"], row["name"], row["ready_at"], row["waiting_reason"])
        for row in rows
    ]


async def set_warnings(db: Db, warnings: Mapping[int, str]) -> None:
    """Why steps (step run id -> text) succeeded all the same."""
    if warnings:
        await db.execute(
            """
            UPDATE step_runs s SET warning = x.warning
            FROM unnest($1::bigint[], $2::text[]) AS x(id, warning) WHERE s.id = x.id
            """,
            list(warnings),
            list(warnings.values()),
        )


async def set_waiting_reasons(db: Db, reasons: Mapping[int, str | None]) -> None:
    """Stores why ready steps wait (step run id -> reason); steps no longer ready are left alone."""
    if not reasons:
        return
    await db.execute(
        """
        UPDATE step_runs s SET waiting_reason = ($2::text[])[array_position($1::bigint[], s.id)]
        WHERE s.id = ANY($1::bigint[]) AND s.status = 'ready'
          AND s.waiting_reason IS DISTINCT FROM ($2::text[])[array_position($1::bigint[], s.id)]
        """,
        list(reasons),
        list(reasons.values()),
    )


async def status_counts(db: Db, run_ids: Sequence[UUID]) -> dict[UUID, dict[str, int]]:
    """For each run, how many of its step runs are in each status (partitions counted, fan-out
    parents not: they have no work of their own)."""
    rows = await db.fetch(
        """
        SELECT run_id, status, count(*) AS n FROM step_runs s
        WHERE run_id = ANY($1::uuid[]) AND NOT EXISTS (
            SELECT 1 FROM step_runs c WHERE c.run_id = s.run_id AND c.partition_of = s.name)
        GROUP BY run_id, status
        """,
        list(run_ids),
    )
    counts: dict[UUID, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row["run_id"], {})[row["status"]] = row["n"]
    return counts
