"""Runs: the run record, reading and counting runs, the held runs waiting for a concurrency slot,
locking a run with its step states for a transition, and ending runs.

Transitions here and in :mod:`daemon.store.steps`, :mod:`daemon.store.attempts` and
:mod:`daemon.store.attempt_reports` are guarded in SQL (``UPDATE … WHERE status IN (expected)``) and
return the rows they changed, so a replayed or late event changes nothing. Functions that change
several rows expect to run inside the caller's transaction (they take a connection). Lock order, to
keep transactions from deadlocking each other: an attempt row, then the run's step rows (by id), then
the run row, then the ``images`` rows a start reports (by reference).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from daemon.store.db import Db, iso
from daemon.store.sql import qualified, values_list

ACTIVE_RUN = ("queued", "running")
ACTIVE = values_list(ACTIVE_RUN)
"""``ACTIVE_RUN`` as statements write it: runs that are not over (those that hold a slot, unless held)."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: UUID
    pipeline: str
    version: int
    status: str
    params: dict[str, Any]
    reuse: bool
    trigger: str | None
    event_id: int | None
    idempotency_key: str | None
    resolution: str
    reason: str | None
    held: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> RunRecord:
        return cls(**{name: row[name] for name in cls.__slots__})

    def summary(self) -> dict[str, Any]:
        """What a state change announces (``sluice.runs.<pipeline>.<status>``, ``event: run``)."""
        return {
            "id": str(self.id),
            "pipeline": self.pipeline,
            "version": self.version,
            "status": self.status,
            "params": self.params,
            "trigger": self.trigger,
            "created_at": self.created_at.isoformat(),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }

    def to_json(self) -> dict[str, Any]:
        """The contract's run shape without ``steps``."""
        return self.summary() | {
            "event_id": self.event_id,
            "reuse": self.reuse,
            "idempotency_key": self.idempotency_key,
            "resolution": self.resolution,
            "reason": self.reason,
            "held": self.held,
        }


RUN_COLUMNS = (
    "id, pipeline, version, status, params, reuse, trigger, event_id, idempotency_key, resolution, reason, "
    "held, created_at, started_at, finished_at"
)


async def find_run_by_key(db: Db, pipeline: str, idempotency_key: str) -> RunRecord | None:
    row = await db.fetchrow(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE pipeline = $1 AND idempotency_key = $2",
        pipeline,
        idempotency_key,
    )
    return None if row is None else RunRecord.from_row(row)


async def get_run(db: Db, run_id: UUID) -> RunRecord | None:
    row = await db.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = $1", run_id)
    return None if row is None else RunRecord.from_row(row)


async def run_ids_between(db: Db, low: UUID, high: UUID, *, limit: int) -> list[UUID]:
    """Up to ``limit`` run ids from ``low`` to ``high`` inclusive: those starting with a prefix."""
    rows = await db.fetch(
        "SELECT id FROM runs WHERE id BETWEEN $1 AND $2 ORDER BY id LIMIT $3", low, high, limit
    )
    return [row["id"] for row in rows]


async def list_runs(
    db: Db,
    *,
    limit: int,
    pipeline: str | None = None,
    status: str | None = None,
    trigger: str | None = None,
    before: tuple[datetime, UUID] | None = None,
) -> list[RunRecord]:
    """Up to ``limit`` runs, newest first, optionally of one pipeline, status and/or trigger, strictly
    older than the (created_at, id) key ``before``."""
    rows = await db.fetch(
        f"""
        SELECT {RUN_COLUMNS} FROM runs
        WHERE ($1::text IS NULL OR pipeline = $1) AND ($2::text IS NULL OR status = $2)
          AND ($6::text IS NULL OR trigger = $6)
          AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
        ORDER BY created_at DESC, id DESC LIMIT $5
        """,
        pipeline,
        status,
        before[0] if before else None,
        before[1] if before else None,
        limit,
        trigger,
    )
    return [RunRecord.from_row(row) for row in rows]


async def lock_active_counts(conn: asyncpg.Connection, pipelines: Collection[str]) -> dict[str, int]:
    """Locks the rows of ``pipelines`` until the transaction ends (in name order, so that two
    transactions taking the same pipelines never deadlock), then counts each one's runs that hold a
    concurrency slot. Serialises run creation per limited pipeline: two creators cannot both take
    the last slot."""
    names = sorted(pipelines)
    await conn.execute("SELECT 1 FROM pipelines WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE", names)
    return await active_counts(conn, names)


async def active_counts(db: Db, pipelines: Collection[str]) -> dict[str, int]:
    """Each of ``pipelines``' runs that hold a concurrency slot, counted without a lock: what a plan
    (which writes nothing) reads, and what :func:`lock_active_counts` counts once it holds the lock."""
    rows = await db.fetch(
        f"""
        SELECT p.name, count(r.id) AS active FROM unnest($1::text[]) AS p(name)
        LEFT JOIN runs r ON r.pipeline = p.name AND r.status IN {ACTIVE} AND NOT r.held
        GROUP BY p.name
        """,
        sorted(pipelines),
    )
    return {row["name"]: row["active"] for row in rows}


async def pipelines_holding_runs(db: Db) -> list[str]:
    """The pipelines that have held runs (waiting for a concurrency slot)."""
    return [row["pipeline"] for row in await db.fetch("SELECT DISTINCT pipeline FROM runs WHERE held")]


async def oldest_held_run(conn: asyncpg.Connection, pipeline: str) -> RunRecord | None:
    """The held run of ``pipeline`` that is next in line, locked until the transaction ends."""
    row = await conn.fetchrow(
        f"""
        SELECT {RUN_COLUMNS} FROM runs WHERE pipeline = $1 AND held AND status = 'queued'
        ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED
        """,
        pipeline,
    )
    return None if row is None else RunRecord.from_row(row)


@dataclass(frozen=True, slots=True)
class StepState:
    id: int
    name: str
    status: str
    attempts_made: int
    partition_of: str | None = None
    """The step that fans out, for a partition's step run."""


async def lock_run(conn: asyncpg.Connection, run_id: UUID) -> tuple[RunRecord, list[StepState]] | None:
    """The run and its steps' states, their rows locked (steps first, by id) until the transaction ends."""
    return (await lock_runs(conn, [run_id])).get(run_id)


async def lock_runs(
    conn: asyncpg.Connection, run_ids: Collection[UUID]
) -> dict[UUID, tuple[RunRecord, list[StepState]]]:
    """:func:`lock_run` for several runs: every step row (by id), then every run row (by id)."""
    ordered = sorted(set(run_ids))
    steps = await conn.fetch(
        """
        SELECT id, run_id, name, status, attempts_made, partition_of FROM step_runs
        WHERE run_id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
        """,
        ordered,
    )
    runs = await conn.fetch(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", ordered
    )
    by_run: dict[UUID, list[StepState]] = {}
    for step in steps:
        by_run.setdefault(step["run_id"], []).append(
            StepState(step["id"], step["name"], step["status"], step["attempts_made"], step["partition_of"])
        )
    return {row["id"]: (RunRecord.from_row(row), by_run.get(row["id"], [])) for row in runs}


async def finish_run(
    conn: asyncpg.Connection, run_id: UUID, status: str, reason: str | None = None
) -> RunRecord | None:
    """Ends an active run with ``status``; None when it had already ended."""
    ended = await finish_runs(conn, {run_id: status}, reason=reason)
    return ended[0] if ended else None


async def finish_runs(
    conn: asyncpg.Connection, outcomes: Mapping[UUID, str], *, reason: str | None = None
) -> list[RunRecord]:
    """Ends active runs (run id -> final status), with ``reason`` when given; runs already ended are
    left out."""
    if not outcomes:
        return []
    rows = await conn.fetch(
        f"""
        UPDATE runs r SET status = x.outcome, finished_at = now(), held = false,
            reason = coalesce($3, r.reason)
        FROM unnest($1::uuid[], $2::text[]) AS x(run_id, outcome)
        WHERE r.id = x.run_id AND r.status IN {ACTIVE}
        RETURNING {qualified(RUN_COLUMNS, "r")}
        """,
        list(outcomes),
        list(outcomes.values()),
        reason,
    )
    return [RunRecord.from_row(row) for row in rows]
