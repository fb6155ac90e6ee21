"""Attempts: the attempt record, where an attempt runs (:class:`Placement`), the daemon's own
statements on attempts (dispatched with its step, the hot path; lost), and the reads of active
attempts (the daemon's memory at start, cancelling, an agent's check). What agents report of their
attempts (started, ended) is :mod:`daemon.store.attempt_reports`. Guards and lock order:
:mod:`daemon.store.runs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from daemon.rules.states import ACTIVE_STEP
from daemon.store.db import Db, iso
from daemon.store.runs import ACTIVE, RUN_COLUMNS, RunRecord
from daemon.store.sql import qualified, values_list

ACTIVE_ATTEMPT = ("dispatched", "running")
ACTIVE_ATTEMPT_SQL = values_list(ACTIVE_ATTEMPT)
"""``ACTIVE_ATTEMPT`` as SQL text, written as the partial indexes are."""
_ACTIVE_STEP = values_list(sorted(ACTIVE_STEP))


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    id: int
    step_run_id: int
    number: int
    agent_id: str | None
    status: str
    exit_code: int | None
    error: str | None
    dispatched_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    gpus: list[int]
    image_digest: str | None  # what its agent reported the image to be (none for a process step)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> AttemptRecord:
        return cls(
            id=row["id"],
            step_run_id=row["step_run_id"],
            number=row["number"],
            agent_id=row["agent_id"],
            status=row["status"],
            exit_code=row["exit_code"],
            error=row["error"],
            dispatched_at=row["dispatched_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            gpus=list(row["gpus"]),
            image_digest=row["image_digest"],
        )

    def to_json(self) -> dict[str, Any]:
        """The contract's attempt shape, with ``id``, ``dispatched_at``, ``gpus`` and ``image_digest``."""
        return {
            "id": self.id,
            "number": self.number,
            "agent": self.agent_id,
            "status": self.status,
            "exit_code": self.exit_code,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "error": self.error,
            "dispatched_at": self.dispatched_at.isoformat(),
            "gpus": self.gpus,
            "image_digest": self.image_digest,
        }


_ATTEMPT_COLUMNS = (
    "id, step_run_id, number, agent_id, status, exit_code, error, dispatched_at, started_at, finished_at, "
    "gpus, image_digest"
)


async def attempts_by_step(
    db: Db, run_id: UUID, step_run_id: int | None = None
) -> dict[int, list[AttemptRecord]]:
    """The attempts of the run's steps (of step ``step_run_id`` only, when given) by step run id,
    each step's by number."""
    rows = await db.fetch(
        f"""
        SELECT {qualified(_ATTEMPT_COLUMNS, "a")}
        FROM attempts a JOIN step_runs s ON s.id = a.step_run_id
        WHERE s.run_id = $1 AND ($2::bigint IS NULL OR a.step_run_id = $2)
        ORDER BY a.step_run_id, a.number
        """,
        run_id,
        step_run_id,
    )
    by_step: dict[int, list[AttemptRecord]] = {}
    for row in rows:
        by_step.setdefault(row["step_run_id"], []).append(AttemptRecord.from_row(row))
    return by_step


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an attempt runs: its agent, the resources it holds there and the GPUs it was given."""

    agent_id: str
    resources: dict[str, Any]
    gpus: tuple[int, ...]


def placement_arrays(placements: Sequence[Placement | None]) -> list[list[Any]]:
    """Placements (None: not placed), one array per attempts column: agent, resources (JSON as
    text), GPUs (an int[] literal)."""
    return [
        [placed and placed.agent_id for placed in placements],
        [placed and msgspec.json.encode(placed.resources).decode() for placed in placements],
        [placed and "{" + ",".join(map(str, placed.gpus)) + "}" for placed in placements],
    ]


@dataclass(frozen=True, slots=True)
class Dispatch:
    step_run_id: int
    placement: Placement


@dataclass(frozen=True, slots=True)
class Dispatched:
    step_run_id: int
    attempt_id: int
    number: int
    run_id: UUID


async def dispatch(db: Db, items: Sequence[Dispatch]) -> tuple[list[Dispatched], list[RunRecord]]:
    """Records one attempt per item whose step is still ready in an active run (step → dispatched)
    and moves queued runs that dispatched their first step to running, in one statement (atomic,
    one round trip: this is the hot path). Step rows are locked before run rows.

    Returns the attempts created (items whose step was no longer ready are left out) and the runs
    that started, as they are now.
    """
    rows = await db.fetch(
        f"""
        WITH steps AS (
            UPDATE step_runs s SET status = 'dispatched', waiting_reason = NULL
            FROM unnest($1::bigint[]) AS x(step_run_id), runs r
            WHERE s.id = x.step_run_id AND s.status = 'ready'
              AND r.id = s.run_id AND r.status IN {ACTIVE} AND NOT r.held
            RETURNING s.id, s.run_id
        ), created AS (
            INSERT INTO attempts (step_run_id, number, agent_id, resources, gpus)
            SELECT s.id,
                   coalesce((SELECT max(a.number) FROM attempts a WHERE a.step_run_id = s.id), 0) + 1,
                   x.agent_id, x.resources::jsonb, x.gpus::int[]
            FROM steps s
            JOIN unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
                AS x(step_run_id, agent_id, resources, gpus) ON x.step_run_id = s.id
            RETURNING id, step_run_id, number
        ), started AS (
            UPDATE runs r SET status = 'running', started_at = now()
            FROM (SELECT DISTINCT run_id FROM steps) t
            WHERE r.id = t.run_id AND r.status = 'queued'
            RETURNING {qualified(RUN_COLUMNS, "r")}
        )
        SELECT c.id AS attempt_id, c.step_run_id, c.number, s.run_id, started.*
        FROM created c JOIN steps s ON s.id = c.step_run_id LEFT JOIN started ON started.id = s.run_id
        """,
        [item.step_run_id for item in items],
        *placement_arrays([item.placement for item in items]),
    )
    dispatched = [
        Dispatched(row["step_run_id"], row["attempt_id"], row["number"], row["run_id"]) for row in rows
    ]
    # Runs that started with this dispatch come along (``id`` is NULL for the others): no read after.
    started = {row["id"]: RunRecord.from_row(row) for row in rows if row["id"] is not None}
    return dispatched, list(started.values())


@dataclass(frozen=True, slots=True)
class Requeued:
    """A step whose attempt was lost: back to ready (or cancelled, in a cancelled run)."""

    attempt_id: int
    step_run_id: int
    run_id: UUID
    name: str
    status: str


async def lose_attempts(conn: asyncpg.Connection, attempts: Mapping[int, str]) -> list[Requeued]:
    """Marks active attempts (id -> error) ``lost`` and puts their steps back to ready — a lost
    attempt does not count against the step's retries. In the caller's transaction."""
    if not attempts:
        return []
    lost = await conn.fetch(
        f"""
        UPDATE attempts a
        SET status = 'lost', error = ($2::text[])[array_position($1::bigint[], a.id)], finished_at = now()
        WHERE a.id = ANY($1::bigint[]) AND a.status IN {ACTIVE_ATTEMPT_SQL}
        RETURNING a.id, a.step_run_id
        """,
        list(attempts),
        list(attempts.values()),
    )
    if not lost:
        return []
    step_of = {row["step_run_id"]: row["id"] for row in lost}
    rows = await conn.fetch(
        f"""
        UPDATE step_runs s
        SET status = CASE WHEN r.status = 'cancelled' THEN 'cancelled' ELSE 'ready' END,
            ready_at = now(),
            finished_at = CASE WHEN r.status = 'cancelled' THEN now() END
        FROM runs r
        WHERE s.id = ANY($1::bigint[]) AND r.id = s.run_id AND s.status IN {_ACTIVE_STEP}
        RETURNING s.id, s.run_id, s.name, s.status
        """,
        list(step_of),
    )
    return [
        Requeued(step_of[row["id"]], row["id"], row["run_id"], row["name"], row["status"]) for row in rows
    ]


async def active_attempt_ids(conn: asyncpg.Connection, agent_id: str) -> list[int]:
    rows = await conn.fetch(
        f"SELECT id FROM attempts WHERE agent_id = $1 AND status IN {ACTIVE_ATTEMPT_SQL}", agent_id
    )
    return [row["id"] for row in rows]


async def cancellable_attempts(conn: asyncpg.Connection, run_id: UUID) -> list[tuple[int, str]]:
    """(attempt id, agent id) of the run's active attempts."""
    rows = await conn.fetch(
        f"""
        SELECT a.id, a.agent_id FROM attempts a JOIN step_runs s ON s.id = a.step_run_id
        WHERE s.run_id = $1 AND a.status IN {ACTIVE_ATTEMPT_SQL} AND a.agent_id IS NOT NULL
        """,
        run_id,
    )
    return [(row["id"], row["agent_id"]) for row in rows]


@dataclass(frozen=True, slots=True)
class ActiveAttempt:
    id: int
    agent_id: str | None
    status: str
    resources: dict[str, Any]
    gpus: tuple[int, ...]
    run_id: UUID
    step: str


async def active_attempts(db: Db) -> list[ActiveAttempt]:
    rows = await db.fetch(
        f"""
        SELECT a.id, a.agent_id, a.status, a.resources, a.gpus, s.run_id, s.name
        FROM attempts a JOIN step_runs s ON s.id = a.step_run_id
        WHERE a.status IN {ACTIVE_ATTEMPT_SQL}
        """
    )
    return [
        ActiveAttempt(
            row["id"],
            row["agent_id"],
            row["status"],
            row["resources"],
            tuple(row["gpus"]),
            row["run_id"],
            row["name"],
        )
        for row in rows
    ]


async def active_attempts_since(db: Db, seconds: float) -> list[tuple[int, str]]:
    """``(attempt id, agent)`` of the active attempts dispatched more than ``seconds`` ago."""
    rows = await db.fetch(
        f"""
        SELECT id, agent_id FROM attempts
        WHERE status IN {ACTIVE_ATTEMPT_SQL} AND agent_id IS NOT NULL
          AND dispatched_at < now() - make_interval(secs => $1)
        """,
        seconds,
    )
    return [(row["id"], row["agent_id"]) for row in rows]


async def attempt_statuses(db: Db, attempt_ids: Sequence[int]) -> dict[int, str]:
    rows = await db.fetch("SELECT id, status FROM attempts WHERE id = ANY($1::bigint[])", list(attempt_ids))
    return {row["id"]: row["status"] for row in rows}


async def attempt_agents(db: Db, attempt_ids: Sequence[int]) -> dict[int, str | None]:
    """The agent each attempt was assigned to (absent: no such attempt)."""
    rows = await db.fetch(
        "SELECT id, agent_id FROM attempts WHERE id = ANY($1::bigint[])", list(dict.fromkeys(attempt_ids))
    )
    return {row["id"]: row["agent_id"] for row in rows}


async def attempt_places(db: Db, attempt_ids: Sequence[int]) -> dict[int, tuple[UUID, str]]:
    """The run and the step run (``score[3]`` for a partition) of each attempt (absent: no such attempt)."""
    rows = await db.fetch(
        """
        SELECT a.id, s.run_id, s.name FROM attempts a JOIN step_runs s ON s.id = a.step_run_id
        WHERE a.id = ANY($1::bigint[])
        """,
        list(dict.fromkeys(attempt_ids)),
    )
    return {row["id"]: (row["run_id"], row["name"]) for row in rows}
