"""Runs, their step runs and the attempts of each step: typed records and every transition in SQL.

Transitions are guarded in SQL (``UPDATE … WHERE status = ANY(expected)``) and return the rows they
changed, so a replayed or late event changes nothing. Functions that change several rows expect to
run inside the caller's transaction (they take a connection); lock order, to keep transactions from
deadlocking each other: an attempt row, then the run's step rows (by id), then the run row, then
the ``images`` rows a start reports (by reference).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec

from daemon.store.db import Db

ACTIVE_RUN = ("queued", "running")
ACTIVE_ATTEMPT = ("dispatched", "running")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


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
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "error": self.error,
            "dispatched_at": self.dispatched_at.isoformat(),
            "gpus": self.gpus,
            "image_digest": self.image_digest,
        }


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
            # Why the step was reused or executed (``daemon.reuse``); None for runs from before reuse.
            "reuse": self.explanation,
            "outputs": self.outputs,
            "metrics": self.metrics,
            "attempts": [attempt.to_json() for attempt in self.attempts],
            "agent": latest.agent_id if latest else None,
            "waiting_reason": self.waiting_reason if self.status == "ready" else None,
            # A step failed without an attempt (it could not be rendered) keeps why in the same column.
            "error": self.waiting_reason if self.status == "failed" else None,
            "ready_at": _iso(self.ready_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


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
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
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
_STEP_COLUMNS = (
    "id, run_id, name, status, fingerprint, reused_from, outputs, metrics, attempts_made, waiting_reason, "
    "explanation, ready_at, started_at, finished_at"
)
_ATTEMPT_COLUMNS = (
    "id, step_run_id, number, agent_id, status, exit_code, error, dispatched_at, started_at, finished_at, "
    "gpus, image_digest"
)


# --- creating and reading runs -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewStep:
    id: int
    name: str
    status: str
    attempt_id: int | None = None
    """The first attempt of a step placed as its run was created (status ``dispatched``)."""


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
class StepPlan:
    """A step of a run about to be inserted: its first status and what reuse decided for it."""

    status: str
    fingerprint: str | None = None
    components: Mapping[str, str] | None = None
    reused_from: int | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    explanation: Mapping[str, Any] | None = None
    placement: Placement | None = None
    """Placed already (status ``dispatched``): the insert records its first attempt."""


async def insert_run(
    db: Db,
    *,
    pipeline: str,
    version: int,
    params: Mapping[str, Any],
    reuse: bool,
    steps: Mapping[str, StepPlan],
    held: bool = False,
    trigger: str | None = None,
    event_id: int | None = None,
    idempotency_key: str | None = None,
    resolution: str = "default",
    only_if_default: bool = False,
    run_id: UUID | None = None,
    finished: bool = False,
) -> tuple[RunRecord, list[NewStep]] | None:
    """Inserts a run (with id ``run_id``, else a new one) and its step runs (in ``steps``' order) in
    one statement: queued, or ``succeeded`` at once when ``finished`` (every step was reused).

    Returns None, inserting nothing, when ``idempotency_key`` is already taken for ``pipeline``, the
    version is disabled (or gone) by the time the statement runs, or (``only_if_default``) it is no
    longer the pipeline's default version: the caller may have picked it from a stale cache.
    """
    run_id = run_id or uuid4()
    row = await db.fetchrow(
        f"""
        WITH run AS (
            INSERT INTO runs (id, pipeline, version, params, reuse, trigger, event_id, idempotency_key,
                              resolution, held, status, started_at, finished_at)
            SELECT $11, $1, $2, $3, $4, $5, $6, $7, $8, $9,
                   {FIRST_STATUS.format(finished="$12", dispatching="$13")}
            WHERE EXISTS (
                SELECT 1 FROM versions WHERE pipeline = $1 AND version = $2 AND status <> 'disabled'
            ) AND (NOT $10 OR EXISTS (SELECT 1 FROM pipelines WHERE name = $1 AND default_version = $2))
            ON CONFLICT (pipeline, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING {RUN_COLUMNS}
        ), {steps_cte("run", 14)}
        SELECT run.*, {STEP_ARRAYS} FROM run
        """,
        pipeline,
        version,
        dict(params),
        reuse,
        trigger,
        event_id,
        idempotency_key,
        resolution,
        held,
        only_if_default,
        run_id,
        finished,
        dispatching(steps),
        *step_arrays([(run_id, steps)]),
    )
    if row is None:
        return None
    return RunRecord.from_row(row), new_steps(row)


FIRST_STATUS = (
    "CASE WHEN {finished} THEN 'succeeded' WHEN {dispatching} THEN 'running' ELSE 'queued' END, "
    "CASE WHEN {finished} OR {dispatching} THEN now() END, CASE WHEN {finished} THEN now() END"
)
"""status, started_at, finished_at of a new run: a run whose every step was reused is over at once;
one whose first steps were placed as it was created has started."""


def dispatching(steps: Mapping[str, StepPlan]) -> bool:
    """Whether a run starts as it is created: some of its steps were placed already."""
    return any(plan.placement is not None for plan in steps.values())


STEP_ARRAYS = ", ".join(
    f"(SELECT array_agg({column} ORDER BY s.id) FROM steps s {join} WHERE s.run_id = run.id) AS {name}"
    for column, join, name in (
        ("s.id", "", "step_ids"),
        ("s.name", "", "step_names"),
        ("s.status", "", "step_statuses"),
        ("a.id", "LEFT JOIN attempts a ON a.step_run_id = s.id", "step_attempts"),
    )
)
"""A run's new step runs, in ``steps`` order, as arrays (see :func:`new_steps`)."""

_STEP_ARRAY_TYPES = ("uuid", "text", "text", "text", "text", "bigint", "text", "text", "text", "text", "text")


def steps_cte(runs: str, first: int) -> str:
    """The CTEs ``steps`` and ``attempts`` of a statement that inserts runs: the step runs of the
    runs that the CTE ``runs`` inserted (others are left out), and the first attempts of those
    placed already (:class:`Placement`), from the arrays of :func:`step_arrays`, bound from parameter
    ``$first`` on."""
    arrays = ", ".join(f"${first + index}::{kind}[]" for index, kind in enumerate(_STEP_ARRAY_TYPES))
    return f"""step_rows AS (
            SELECT * FROM unnest({arrays})
                 WITH ORDINALITY AS x(run_id, name, status, fingerprint, components, reused_from, outputs,
                                      explanation, agent_id, resources, gpus, position)
        ), steps AS (
            INSERT INTO step_runs (run_id, name, status, ready_at, finished_at, fingerprint, components,
                                   reused_from, outputs, explanation)
            SELECT x.run_id, x.name, x.status, CASE WHEN x.status IN ('ready', 'dispatched') THEN now() END,
                   CASE WHEN x.status = 'reused' THEN now() END, x.fingerprint, x.components::jsonb,
                   x.reused_from, coalesce(x.outputs::jsonb, '{{}}'), x.explanation::jsonb
            FROM step_rows x WHERE x.run_id IN (SELECT id FROM {runs})
            ORDER BY x.position
            RETURNING id, run_id, name, status
        ), attempts AS (
            INSERT INTO attempts (step_run_id, number, agent_id, resources, gpus)
            SELECT s.id, 1, x.agent_id, x.resources::jsonb, x.gpus::int[]
            FROM step_rows x JOIN steps s ON s.run_id = x.run_id AND s.name = x.name
            WHERE x.agent_id IS NOT NULL
            RETURNING id, step_run_id
        )"""


def step_arrays(runs: Sequence[tuple[UUID, Mapping[str, StepPlan]]]) -> list[list[Any]]:
    """The step runs of new runs (run id, the run's steps by name), one array per column, for
    :func:`steps_cte`: run id, name, status, then what reuse decided (fingerprint, components,
    reused_from, outputs, explanation; JSON as text), then the placement (:func:`placement_arrays`)."""
    run_ids: list[UUID] = []
    names: list[str] = []
    plans: list[StepPlan] = []
    for run_id, steps in runs:
        run_ids.extend([run_id] * len(steps))
        names.extend(steps)
        plans.extend(steps.values())
    return [
        run_ids,
        names,
        [plan.status for plan in plans],
        *reuse_arrays(plans),
        *placement_arrays([plan.placement for plan in plans]),
    ]


def reuse_arrays(plans: Sequence[StepPlan]) -> list[list[Any]]:
    """What reuse decided for each step, one array per column: fingerprint, components, reused_from,
    outputs, explanation (JSON as text)."""
    return [
        [plan.fingerprint for plan in plans],
        [_json_or_none(plan.components) for plan in plans],
        [plan.reused_from for plan in plans],
        [_json_or_none(plan.outputs) for plan in plans],
        [_json_or_none(plan.explanation) for plan in plans],
    ]


def new_steps(row: asyncpg.Record) -> list[NewStep]:
    """The step runs a run was inserted with (the columns of ``STEP_ARRAYS``)."""
    columns = ("step_ids", "step_names", "step_statuses", "step_attempts")
    return [NewStep(*item) for item in zip(*(row[column] or [] for column in columns), strict=True)]


def _json_or_none(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


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


async def get_runs(db: Db, run_ids: Sequence[UUID]) -> list[RunRecord]:
    rows = await db.fetch(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ANY($1::uuid[])", list(run_ids))
    return [RunRecord.from_row(row) for row in rows]


async def get_steps(db: Db, run_id: UUID) -> list[StepRunRecord]:
    """The run's steps in pipeline order (insertion order), each with its attempts by number."""
    steps = await db.fetch(f"SELECT {_STEP_COLUMNS} FROM step_runs WHERE run_id = $1 ORDER BY id", run_id)
    attempts = await db.fetch(
        f"""
        SELECT {", ".join("a." + column.strip() for column in _ATTEMPT_COLUMNS.split(","))}
        FROM attempts a JOIN step_runs s ON s.id = a.step_run_id
        WHERE s.run_id = $1 ORDER BY a.step_run_id, a.number
        """,
        run_id,
    )
    by_step: dict[int, list[AttemptRecord]] = {}
    for row in attempts:
        by_step.setdefault(row["step_run_id"], []).append(AttemptRecord.from_row(row))
    return [StepRunRecord.from_row(row, by_step.get(row["id"], [])) for row in steps]


async def get_step(db: Db, run_id: UUID, name: str) -> StepRunRecord | None:
    row = await db.fetchrow(
        f"SELECT {_STEP_COLUMNS} FROM step_runs WHERE run_id = $1 AND name = $2", run_id, name
    )
    if row is None:
        return None
    attempts = await db.fetch(
        f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE step_run_id = $1 ORDER BY number", row["id"]
    )
    return StepRunRecord.from_row(row, [AttemptRecord.from_row(attempt) for attempt in attempts])


async def list_runs(
    db: Db,
    *,
    limit: int,
    pipeline: str | None = None,
    status: str | None = None,
    before: tuple[datetime, UUID] | None = None,
) -> list[RunRecord]:
    """Up to ``limit`` runs, newest first, optionally of one pipeline and/or status, strictly older
    than the (created_at, id) key ``before``."""
    rows = await db.fetch(
        f"""
        SELECT {RUN_COLUMNS} FROM runs
        WHERE ($1::text IS NULL OR pipeline = $1) AND ($2::text IS NULL OR status = $2)
          AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
        ORDER BY created_at DESC, id DESC LIMIT $5
        """,
        pipeline,
        status,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )
    return [RunRecord.from_row(row) for row in rows]


async def count_active_runs(conn: asyncpg.Connection, pipeline: str) -> int:
    """Runs of ``pipeline`` that hold a concurrency slot: queued or running, and not held back."""
    return await conn.fetchval(
        "SELECT count(*) FROM runs WHERE pipeline = $1 AND status IN ('queued', 'running') AND NOT held",
        pipeline,
    )


async def lock_active_counts(conn: asyncpg.Connection, pipelines: Collection[str]) -> dict[str, int]:
    """Locks the rows of ``pipelines`` until the transaction ends (in name order, so that two
    transactions taking the same pipelines never deadlock), then counts each one's runs that hold a
    concurrency slot. Serialises run creation per limited pipeline: two creators cannot both take
    the last slot."""
    names = sorted(pipelines)
    await conn.execute("SELECT 1 FROM pipelines WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE", names)
    rows = await conn.fetch(
        """
        SELECT p.name, count(r.id) AS active FROM unnest($1::text[]) AS p(name)
        LEFT JOIN runs r ON r.pipeline = p.name AND r.status IN ('queued', 'running') AND NOT r.held
        GROUP BY p.name
        """,
        names,
    )
    return {row["name"]: row["active"] for row in rows}


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


async def admit_run(conn: asyncpg.Connection, run_id: UUID, steps: Mapping[str, StepPlan]) -> list[NewStep]:
    """Releases a held run: it takes a slot, and each of its steps takes its plan as made now
    (status, fingerprint, reuse). Returns the steps with their new status."""
    await conn.execute("UPDATE runs SET held = false WHERE id = $1", run_id)
    rows = await conn.fetch(
        """
        UPDATE step_runs s SET status = x.status, fingerprint = x.fingerprint,
               components = x.components::jsonb, reused_from = x.reused_from,
               outputs = coalesce(x.outputs::jsonb, '{}'), explanation = x.explanation::jsonb,
               ready_at = CASE WHEN x.status = 'ready' THEN now() END,
               finished_at = CASE WHEN x.status = 'reused' THEN now() END
        FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[])
             AS x(name, status, fingerprint, components, reused_from, outputs, explanation)
        WHERE s.run_id = $1 AND s.name = x.name AND s.status = 'pending'
        RETURNING s.id, s.name, s.status
        """,
        run_id,
        list(steps),
        [plan.status for plan in steps.values()],
        *reuse_arrays(list(steps.values())),
    )
    return [NewStep(row["id"], row["name"], row["status"]) for row in rows]


# --- locking a run for a transition --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepState:
    id: int
    name: str
    status: str
    attempts_made: int


async def lock_run(conn: asyncpg.Connection, run_id: UUID) -> tuple[RunRecord, list[StepState]] | None:
    """The run and its steps' states, their rows locked (steps first, by id) until the transaction ends."""
    steps = await conn.fetch(
        "SELECT id, name, status, attempts_made FROM step_runs WHERE run_id = $1 ORDER BY id FOR UPDATE",
        run_id,
    )
    row = await conn.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 FOR UPDATE", run_id)
    if row is None:
        return None
    return RunRecord.from_row(row), [
        StepState(step["id"], step["name"], step["status"], step["attempts_made"]) for step in steps
    ]


async def set_step_statuses(
    conn: asyncpg.Connection, run_id: UUID, changes: Mapping[str, str], *, error: str | None = None
) -> list[NewStep]:
    """Moves steps by name to new statuses (ready, skipped, cancelled …); final ones get finished_at."""
    if not changes:
        return []
    rows = await conn.fetch(
        """
        UPDATE step_runs s SET status = x.status,
            ready_at = CASE WHEN x.status = 'ready' THEN now() ELSE s.ready_at END,
            finished_at = CASE WHEN x.status IN ('succeeded', 'failed', 'reused', 'skipped', 'cancelled')
                               THEN now() ELSE s.finished_at END,
            waiting_reason = CASE WHEN x.status = 'failed' THEN $4 ELSE NULL END
        FROM unnest($2::text[], $3::text[]) AS x(name, status)
        WHERE s.run_id = $1 AND s.name = x.name AND s.status <> x.status
        RETURNING s.id, s.name, s.status
        """,
        run_id,
        list(changes),
        list(changes.values()),
        error,
    )
    return [NewStep(row["id"], row["name"], row["status"]) for row in rows]


async def finish_run(
    conn: asyncpg.Connection, run_id: UUID, status: str, reason: str | None = None
) -> RunRecord | None:
    """Ends an active run with ``status``; None when it had already ended."""
    row = await conn.fetchrow(
        f"""
        UPDATE runs SET status = $2, finished_at = now(), held = false, reason = coalesce($3, reason)
        WHERE id = $1 AND status IN ('queued', 'running')
        RETURNING {RUN_COLUMNS}
        """,
        run_id,
        status,
        reason,
    )
    return None if row is None else RunRecord.from_row(row)


# --- dispatching --------------------------------------------------------------------------------


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
              AND r.id = s.run_id AND r.status IN ('queued', 'running') AND NOT r.held
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
            RETURNING {", ".join("r." + column.strip() for column in RUN_COLUMNS.split(","))}
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
        """
        UPDATE attempts a
        SET status = 'lost', error = ($2::text[])[array_position($1::bigint[], a.id)], finished_at = now()
        WHERE a.id = ANY($1::bigint[]) AND a.status IN ('dispatched', 'running')
        RETURNING a.id, a.step_run_id
        """,
        list(attempts),
        list(attempts.values()),
    )
    if not lost:
        return []
    step_of = {row["step_run_id"]: row["id"] for row in lost}
    rows = await conn.fetch(
        """
        UPDATE step_runs s
        SET status = CASE WHEN r.status = 'cancelled' THEN 'cancelled' ELSE 'ready' END,
            ready_at = now(),
            finished_at = CASE WHEN r.status = 'cancelled' THEN now() END
        FROM runs r
        WHERE s.id = ANY($1::bigint[]) AND r.id = s.run_id AND s.status IN ('dispatched', 'running')
        RETURNING s.id, s.run_id, s.name, s.status
        """,
        list(step_of),
    )
    return [
        Requeued(step_of[row["id"]], row["id"], row["run_id"], row["name"], row["status"]) for row in rows
    ]


async def active_attempt_ids(conn: asyncpg.Connection, agent_id: str) -> list[int]:
    rows = await conn.fetch(
        "SELECT id FROM attempts WHERE agent_id = $1 AND status IN ('dispatched', 'running')", agent_id
    )
    return [row["id"] for row in rows]


# --- step events (applied in batches) ------------------------------------------------------------


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
    transaction ends (the first of the locks a batch of step events takes; see the module's order)."""
    rows = await conn.fetch(
        """
        SELECT a.id, a.step_run_id, s.run_id, s.name, a.number, a.agent_id, a.status
        FROM attempts a JOIN step_runs s ON s.id = a.step_run_id
        WHERE a.id = ANY($1::bigint[]) ORDER BY a.id FOR UPDATE OF a
        """,
        sorted(attempt_ids),
    )
    return {row["id"]: LockedAttempt(*row.values()) for row in rows}


async def lock_runs(
    conn: asyncpg.Connection, run_ids: Collection[UUID]
) -> dict[UUID, tuple[RunRecord, list[StepState]]]:
    """:func:`lock_run` for several runs: every step row (by id), then every run row (by id)."""
    ordered = sorted(set(run_ids))
    steps = await conn.fetch(
        """
        SELECT id, run_id, name, status, attempts_made FROM step_runs
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
            StepState(step["id"], step["name"], step["status"], step["attempts_made"])
        )
    return {row["id"]: (RunRecord.from_row(row), by_run.get(row["id"], [])) for row in runs}


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
    run_columns = ", ".join("r." + column.strip() for column in RUN_COLUMNS.split(","))
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
            RETURNING {run_columns}
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
        """
        UPDATE attempts a SET status = x.outcome, exit_code = x.code, error = x.message,
            started_at = coalesce(a.started_at, to_timestamp(x.began)), finished_at = to_timestamp(x.ended)
        FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::float8[], $6::float8[])
            AS x(attempt_id, outcome, code, message, began, ended)
        WHERE a.id = x.attempt_id AND a.status IN ('dispatched', 'running')
        """,
        [end.attempt_id for end in ends],
        [end.status for end in ends],
        [end.exit_code for end in ends],
        [end.error for end in ends],
        [end.started_at for end in ends],
        [end.finished_at for end in ends],
    )


@dataclass(frozen=True, slots=True)
class StepResult:
    """What an attempt's end did to its step (from :func:`daemon.planner.after_attempt`)."""

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


async def set_statuses_by_id(conn: asyncpg.Connection, changes: Mapping[int, str]) -> list[NewStep]:
    """:func:`set_step_statuses` for steps of any runs, by step run id (the planner's follow-ups)."""
    if not changes:
        return []
    rows = await conn.fetch(
        """
        UPDATE step_runs s SET status = x.outcome,
            ready_at = CASE WHEN x.outcome = 'ready' THEN now() ELSE s.ready_at END,
            finished_at = CASE WHEN x.outcome IN ('succeeded', 'failed', 'reused', 'skipped', 'cancelled')
                               THEN now() ELSE s.finished_at END,
            waiting_reason = NULL
        FROM unnest($1::bigint[], $2::text[]) AS x(step_id, outcome)
        WHERE s.id = x.step_id AND s.status <> x.outcome
        RETURNING s.id, s.name, s.status
        """,
        list(changes),
        list(changes.values()),
    )
    return [NewStep(row["id"], row["name"], row["status"]) for row in rows]


async def finish_runs(conn: asyncpg.Connection, outcomes: Mapping[UUID, str]) -> list[RunRecord]:
    """:func:`finish_run` for several runs (run id -> final status); runs already ended are left out."""
    if not outcomes:
        return []
    run_columns = ", ".join("r." + column.strip() for column in RUN_COLUMNS.split(","))
    rows = await conn.fetch(
        f"""
        UPDATE runs r SET status = x.outcome, finished_at = now(), held = false
        FROM unnest($1::uuid[], $2::text[]) AS x(run_id, outcome)
        WHERE r.id = x.run_id AND r.status IN ('queued', 'running')
        RETURNING {run_columns}
        """,
        list(outcomes),
        list(outcomes.values()),
    )
    return [RunRecord.from_row(row) for row in rows]


async def cancellable_attempts(conn: asyncpg.Connection, run_id: UUID) -> list[tuple[int, str]]:
    """(attempt id, agent id) of the run's active attempts."""
    rows = await conn.fetch(
        """
        SELECT a.id, a.agent_id FROM attempts a JOIN step_runs s ON s.id = a.step_run_id
        WHERE s.run_id = $1 AND a.status IN ('dispatched', 'running') AND a.agent_id IS NOT NULL
        """,
        run_id,
    )
    return [(row["id"], row["agent_id"]) for row in rows]


# --- rebuilding memory at start -----------------------------------------------------------------


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
        """
        SELECT s.id, s.run_id, s.name, s.ready_at, s.waiting_reason FROM step_runs s
        JOIN runs r ON r.id = s.run_id
        WHERE s.status = 'ready' AND r.status IN ('queued', 'running') AND NOT r.held
        ORDER BY s.ready_at NULLS FIRST, s.id
        """
    )
    return [
        ReadyRow(row["id"], row["run_id"], row["name"], row["ready_at"], row["waiting_reason"])
        for row in rows
    ]


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
        """
        SELECT a.id, a.agent_id, a.status, a.resources, a.gpus, s.run_id, s.name
        FROM attempts a JOIN step_runs s ON s.id = a.step_run_id
        WHERE a.status IN ('dispatched', 'running')
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


async def attempt_statuses(db: Db, attempt_ids: Sequence[int]) -> dict[int, str]:
    rows = await db.fetch("SELECT id, status FROM attempts WHERE id = ANY($1::bigint[])", list(attempt_ids))
    return {row["id"]: row["status"] for row in rows}


async def attempt_agents(db: Db, attempt_ids: Sequence[int]) -> dict[int, str | None]:
    """The agent each attempt was assigned to (absent: no such attempt)."""
    rows = await db.fetch(
        "SELECT id, agent_id FROM attempts WHERE id = ANY($1::bigint[])", list(dict.fromkeys(attempt_ids))
    )
    return {row["id"]: row["agent_id"] for row in rows}


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
