"""What agents report of their attempts: started (attempt, step and run → running, the image digest
kept) and ended, each attempt locked first. The step events' statements; the run and step
transitions that follow are the caller's. Guards and lock order: :mod:`daemon.store.runs`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from daemon.store.attempts import ACTIVE_ATTEMPT_SQL
from daemon.store.db import Db
from daemon.store.runs import RUN_COLUMNS, RunRecord
from daemon.store.sql import qualified


@dataclass(frozen=True, slots=True)
class LockedAttempt:
    id: int
    step_run_id: int
    run_id: UUID
    step: str
    number: int
    agent_id: str | None
    status: str


async def lock_attempts(conn: asyncpg.Connection, attempt_ids: Collection[int]) -> dict[int, LockedAttempt]:
    """The attempts among ``attempt_ids`` that exist, their rows locked in id order until the
    transaction ends (the first of the locks a batch of step events takes; lock order:
    :mod:`daemon.store.runs`)."""
    rows = await conn.fetch(
        """
        SELECT a.id, a.step_run_id, s.run_id, s.name, a.number, a.agent_id, a.status
        FROM attempts a JOIN step_runs s ON s.id = a.step_run_id
        WHERE a.id = ANY($1::bigint[]) ORDER BY a.id FOR UPDATE OF a
        """,
        sorted(attempt_ids),
    )
    return {row["id"]: LockedAttempt(*row.values()) for row in rows}


@dataclass(frozen=True, slots=True)
class Started:
    attempt_id: int
    agent_id: str
    run_id: UUID
    step: str
    number: int
    run: RunRecord | None  # set when the run moved to running with this event
    run_status: str


@dataclass(frozen=True, slots=True)
class AttemptStart:
    """An agent's report that an attempt started (``StepStarted``)."""

    attempt_id: int
    agent_id: str
    started_at: float  # unix time
    image_digest: str | None = None


async def start_attempts(db: Db, starts: Sequence[AttemptStart]) -> list[Started]:
    """Attempts dispatched → running, their steps → running, queued runs → running, in one statement.
    An attempt not dispatched on that agent any more (a duplicate or late event) is left out of the
    result, as is one whose step is no longer dispatched.

    Each attempt started keeps the image digest its agent reported, and ``images`` takes it as the
    latest digest of the step's image reference (from the version's spec); within one call, the
    attempt that started last wins for a reference.
    """
    if not starts:
        return []
    rows = await db.fetch(
        f"""
        WITH a AS (
            UPDATE attempts a
            SET status = 'running', started_at = to_timestamp(x.at), image_digest = x.digest
            FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::text[])
                AS x(attempt_id, agent, at, digest)
            WHERE a.id = x.attempt_id AND a.agent_id = x.agent AND a.status = 'dispatched'
            RETURNING a.id, a.agent_id, a.step_run_id, a.number, a.started_at, a.image_digest
        ), s AS (
            UPDATE step_runs s SET status = 'running', started_at = coalesce(s.started_at, a.started_at)
            FROM a WHERE s.id = a.step_run_id AND s.status = 'dispatched'
            RETURNING s.run_id, s.name, a.id AS attempt_id, a.agent_id AS agent, a.number
        ), r AS (
            UPDATE runs r SET status = 'running', started_at = coalesce(r.started_at, now())
            WHERE r.id IN (SELECT run_id FROM s) AND r.status = 'queued'
            RETURNING {qualified(RUN_COLUMNS, "r")}
        ), reported AS (
            -- The step's image as the version's spec writes it (step defaults already merged in).
            SELECT DISTINCT ON (reference) reference, digest FROM (
                SELECT (SELECT step ->> 'image' FROM jsonb_array_elements(v.spec -> 'steps') step
                        WHERE step ->> 'name' = sr.name) AS reference,
                       a.image_digest AS digest, a.started_at, a.id
                FROM a
                JOIN step_runs sr ON sr.id = a.step_run_id
                JOIN runs ru ON ru.id = sr.run_id
                JOIN versions v ON v.pipeline = ru.pipeline AND v.version = ru.version
                WHERE a.image_digest IS NOT NULL
            ) t
            WHERE reference IS NOT NULL
            ORDER BY reference, started_at DESC, id DESC
        ), i AS (
            -- Unread below: a data-modifying CTE runs all the same. Sorted by reference (lock order).
            INSERT INTO images (reference, digest, seen_at)
            SELECT reference, digest, now() FROM reported ORDER BY reference
            ON CONFLICT (reference) DO UPDATE SET digest = excluded.digest, seen_at = excluded.seen_at
        )
        SELECT s.attempt_id, s.agent, s.run_id, s.name AS step, s.number,
               coalesce(r.status, (SELECT status FROM runs WHERE runs.id = s.run_id)) AS run_status, r.*
        FROM s LEFT JOIN r ON r.id = s.run_id
        """,
        [start.attempt_id for start in starts],
        [start.agent_id for start in starts],
        [start.started_at for start in starts],
        [start.image_digest for start in starts],
    )
    # ``id`` (the run's, from ``r``) is NULL unless this statement started the run.
    return [
        Started(
            row["attempt_id"],
            row["agent"],
            row["run_id"],
            row["step"],
            row["number"],
            RunRecord.from_row(row) if row["id"] is not None else None,
            row["run_status"],
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    attempt_id: int
    status: str
    exit_code: int | None
    error: str | None
    started_at: float | None  # unix time
    finished_at: float


async def finish_attempts(conn: asyncpg.Connection, ends: Sequence[AttemptEnd]) -> None:
    """Ends attempts that the caller locked (:func:`lock_attempts`) and found active."""
    if not ends:
        return
    await conn.execute(
        f"""
        UPDATE attempts a SET status = x.outcome, exit_code = x.code, error = x.message,
            started_at = coalesce(a.started_at, to_timestamp(x.began)), finished_at = to_timestamp(x.ended)
        FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::float8[], $6::float8[])
            AS x(attempt_id, outcome, code, message, began, ended)
        WHERE a.id = x.attempt_id AND a.status IN {ACTIVE_ATTEMPT_SQL}
        """,
        [end.attempt_id for end in ends],
        [end.status for end in ends],
        [end.exit_code for end in ends],
        [end.error for end in ends],
        [end.started_at for end in ends],
        [end.finished_at for end in ends],
    )
