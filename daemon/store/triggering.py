"""What running triggers need from the store: reading what a trigger's events run, writing events
with their outcomes and runs (the exactly-once statement), each trigger's source state, and the
finished runs a ``run`` trigger catches up on.

:func:`insert_events` writes a batch of events (unique on trigger + dedupe key, so a repeat collides
and writes nothing) together with the runs they became and those runs' steps, in one statement. An
event's run id is made by the caller and its foreign key deferred, so an event whose run could not be
written fails the statement rather than pointing nowhere. The trigger row is not written there:
:func:`touch_triggers` moves ``last_event_at`` after it, so that concurrent events of one trigger do
not queue on its row lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from daemon.store.db import Db
from daemon.store.new_runs import (
    FIRST_STATUS,
    STEP_ARRAYS,
    StepPlan,
    dispatching,
    new_steps,
    step_arrays,
    steps_cte,
)
from daemon.store.runs import RUN_COLUMNS, RunRecord
from daemon.store.sql import qualified
from daemon.store.steps import NewStep


@dataclass(frozen=True, slots=True)
class Target:
    """What a trigger's events run, as the store has it now: ``version`` is the pin, else the
    pipeline's default version now."""

    pipeline: str
    pinned: bool
    version: int
    version_status: str
    paused: bool
    bindings: dict[str, Any]
    kind: str
    """The trigger's source: ``cron``, ``files``, ``nats`` or ``run``."""


@dataclass(frozen=True, slots=True)
class BatchRead:
    """What a batch of events meets in the store before it is written."""

    targets: dict[str, Target]
    """Each trigger that exists -> its target now."""
    ids: list[int]
    """An id for each event, taken now, so that its params may be templated from it."""
    recorded: dict[tuple[str, str], tuple[int, UUID | None]]
    """(trigger, dedupe key) already recorded -> that event's id and run id: a repeat."""


_TARGETS = """
    SELECT t.name, t.source, t.pipeline, t.version IS NOT NULL AS pinned, t.paused,
           t.spec -> 'params' AS bindings, v.version, v.status AS version_status
    FROM triggers t JOIN pipelines p ON p.name = t.pipeline
    JOIN versions v ON v.pipeline = t.pipeline AND v.version = coalesce(t.version, p.default_version)
    WHERE t.name = ANY($1::text[])
"""
"""Each named trigger's target now (the pin, or the pipeline's default): one text for the batch read
and for :func:`read_target`, so a trigger test reads what an event would."""


def _target(row: Mapping[str, Any]) -> Target:
    return Target(
        pipeline=row["pipeline"],
        pinned=row["pinned"],
        version=row["version"],
        version_status=row["version_status"],
        paused=row["paused"],
        bindings=row["bindings"] or {},
        kind=row["source"],
    )


async def read_target(db: Db, trigger: str) -> Target | None:
    """What ``trigger``'s events run now, as :func:`read_batch` reads it, without taking event ids:
    a trigger test writes nothing, not even a sequence."""
    row = await db.fetchrow(_TARGETS, [trigger])
    return None if row is None else _target(row)


async def read_batch(db: Db, keys: Sequence[tuple[str, str]]) -> BatchRead:
    """For events by (trigger, dedupe key), in one round trip: their triggers' targets, an id for
    each, and the events their triggers already have with those keys."""
    rows = await db.fetch(
        f"""
        SELECT ids.ids, recorded.*, t.*
        FROM (
            SELECT array(
                SELECT nextval('events_id_seq') FROM generate_series(1, cardinality($1::text[]))
            ) AS ids
        ) ids
        CROSS JOIN (
            SELECT array_agg(e.trigger ORDER BY e.id) AS recorded_triggers,
                   array_agg(e.dedupe_key ORDER BY e.id) AS recorded_keys,
                   array_agg(e.id ORDER BY e.id) AS recorded_ids,
                   array_agg(e.run_id ORDER BY e.id) AS recorded_runs
            FROM unnest($1::text[], $2::text[]) AS x(trigger, dedupe_key)
            JOIN events e ON e.trigger = x.trigger AND e.dedupe_key = x.dedupe_key
        ) recorded
        LEFT JOIN ({_TARGETS}) t ON true
        """,
        [trigger for trigger, _ in keys],
        [key for _, key in keys],
    )
    head = rows[0]
    recorded = zip(
        head["recorded_triggers"] or [],
        head["recorded_keys"] or [],
        head["recorded_ids"] or [],
        head["recorded_runs"] or [],
        strict=True,
    )
    return BatchRead(
        targets={row["name"]: _target(row) for row in rows if row["name"] is not None},
        ids=list(head["ids"]),
        recorded={(trigger, key): (event_id, run_id) for trigger, key, event_id, run_id in recorded},
    )


@dataclass(frozen=True, slots=True)
class NewRun:
    """The run an event becomes."""

    id: UUID
    pipeline: str
    version: int
    params: Mapping[str, Any]
    resolution: str
    held: bool
    finished: bool
    steps: Mapping[str, StepPlan]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event as it is written: ``outcome`` run (with ``run``), rejected or skipped (with ``reason``)."""

    id: int
    trigger: str
    dedupe_key: str
    received_at: datetime
    fields: dict[str, Any]
    outcome: str
    reason: str | None = None
    run: NewRun | None = None
    backfill_id: int | None = None
    """The backfill that offered it (None: a live event)."""


_BACKFILL_IDS = 18 + len(step_arrays([]))
"""The parameter of the events' backfill ids: after the step arrays."""

_INSERT_EVENTS = f"""
WITH e AS (
    INSERT INTO events (id, trigger, dedupe_key, received_at, fields, outcome, run_id, reason, backfill_id)
    SELECT x.id, x.trigger, x.dedupe_key, x.received_at, x.fields::jsonb, x.outcome, x.run_id, x.reason,
           x.backfill_id
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::uuid[],
                $8::text[], ${_BACKFILL_IDS}::bigint[])
         AS x(id, trigger, dedupe_key, received_at, fields, outcome, run_id, reason, backfill_id)
    ON CONFLICT (trigger, dedupe_key) DO NOTHING
    RETURNING id, run_id
), run AS (
    INSERT INTO runs (id, pipeline, version, params, reuse, trigger, event_id, resolution, held, status,
                      started_at, finished_at)
    SELECT x.id, x.pipeline, x.version, x.params::jsonb, true, x.trigger, e.id, x.resolution, x.held,
           {FIRST_STATUS.format(finished="x.finished", dispatching="x.dispatching")}
    FROM unnest($9::uuid[], $10::text[], $11::int[], $12::text[], $13::text[], $14::text[], $15::bool[],
                $16::bool[], $17::bool[])
         AS x(id, pipeline, version, params, trigger, resolution, held, finished, dispatching)
    JOIN e ON e.run_id = x.id
    WHERE EXISTS (
        SELECT 1 FROM versions v
        WHERE v.pipeline = x.pipeline AND v.version = x.version AND v.status <> 'disabled'
    )
    RETURNING {RUN_COLUMNS}
), earlier AS (
    -- Seen with the statement's snapshot: the events committed before it, not those written by it.
    SELECT x.id AS repeat, ev.id, ev.run_id
    FROM unnest($1::bigint[], $2::text[], $3::text[]) AS x(id, trigger, dedupe_key)
    JOIN events ev ON ev.trigger = x.trigger AND ev.dedupe_key = x.dedupe_key
), {steps_cte("run", 18)}
SELECT (SELECT array_agg(id) FROM e) AS written,
       (SELECT array_agg(repeat ORDER BY repeat) FROM earlier) AS repeats,
       (SELECT array_agg(id ORDER BY repeat) FROM earlier) AS earlier_ids,
       (SELECT array_agg(run_id ORDER BY repeat) FROM earlier) AS earlier_runs,
       run.*, {STEP_ARRAYS}
FROM (SELECT 1) one LEFT JOIN run ON true
"""


@dataclass(frozen=True, slots=True)
class Written:
    events: set[int]
    """The ids of the events written (the others repeat an event their trigger already has)."""
    earlier: dict[int, tuple[int, UUID | None]]
    """Repeats -> the id and run id of the event their trigger had (committed before the write;
    one committed while it ran is missing here: :func:`find_events`)."""
    runs: dict[UUID, tuple[RunRecord, list[NewStep]]]


async def insert_events(db: Db, events: Sequence[NewEvent]) -> Written:
    """Writes the events and the runs they became, with their step runs, in one statement (atomic:
    this is the hot path of every trigger). An event whose trigger already has its dedupe key is not
    written, nor is its run.

    A run whose version was disabled since the caller read it is not written either, and the
    statement then fails on its event's deferred foreign key: nothing is written, and the caller
    tries again with what the store says now.
    """
    if not events:
        return Written(set(), {}, {})
    runs = [(event, event.run) for event in events if event.run is not None]
    rows = await db.fetch(
        _INSERT_EVENTS,
        [event.id for event in events],
        [event.trigger for event in events],
        [event.dedupe_key for event in events],
        [event.received_at for event in events],
        [msgspec.json.encode(event.fields).decode() for event in events],
        [event.outcome for event in events],
        [None if event.run is None else event.run.id for event in events],
        [event.reason for event in events],
        [run.id for _, run in runs],
        [run.pipeline for _, run in runs],
        [run.version for _, run in runs],
        [msgspec.json.encode(run.params).decode() for _, run in runs],
        [event.trigger for event, _ in runs],
        [run.resolution for _, run in runs],
        [run.held for _, run in runs],
        [run.finished for _, run in runs],
        [dispatching(run.steps) for _, run in runs],
        *step_arrays([(run.id, run.steps) for _, run in runs]),
        [event.backfill_id for event in events],
    )
    head = rows[0]
    earlier = zip(head["repeats"] or [], head["earlier_ids"] or [], head["earlier_runs"] or [], strict=True)
    return Written(
        events=set(head["written"] or []),
        earlier={repeat: (event_id, run_id) for repeat, event_id, run_id in earlier},
        runs={row["id"]: (RunRecord.from_row(row), new_steps(row)) for row in rows if row["id"] is not None},
    )


async def find_events(
    db: Db, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[int, UUID | None]]:
    """The id and run id of each (trigger, dedupe key) that has an event."""
    rows = await db.fetch(
        """
        SELECT e.trigger, e.dedupe_key, e.id, e.run_id
        FROM unnest($1::text[], $2::text[]) AS x(trigger, dedupe_key)
        JOIN events e ON e.trigger = x.trigger AND e.dedupe_key = x.dedupe_key
        """,
        [trigger for trigger, _ in keys],
        [key for _, key in keys],
    )
    return {(row["trigger"], row["dedupe_key"]): (row["id"], row["run_id"]) for row in rows}


async def touch_triggers(db: Db, touches: Mapping[str, datetime]) -> None:
    """Moves each trigger's ``last_event_at`` forward to its time in ``touches`` (never back), in one
    statement."""
    if not touches:
        return
    await db.execute(
        """
        UPDATE triggers t SET last_event_at = x.at
        FROM unnest($1::text[], $2::timestamptz[]) AS x(name, at)
        WHERE t.name = x.name AND (t.last_event_at IS NULL OR t.last_event_at < x.at)
        """,
        list(touches),
        list(touches.values()),
    )


@dataclass(frozen=True, slots=True)
class TriggerRow:
    """A trigger as the trigger manager runs it."""

    name: str
    source: str
    spec: dict[str, Any]
    paused: bool
    state: dict[str, Any]
    updated_at: datetime


async def load_triggers(db: Db, names: Sequence[str] | None = None) -> list[TriggerRow]:
    """Every trigger (or those of ``names`` that exist), by name."""
    rows = await db.fetch(
        """
        SELECT name, source, spec, paused, state, updated_at FROM triggers
        WHERE $1::text[] IS NULL OR name = ANY($1::text[]) ORDER BY name
        """,
        None if names is None else list(names),
    )
    return [TriggerRow(**dict(row)) for row in rows]


async def trigger_targets(db: Db) -> list[tuple[str, str, str]]:
    """(name, pipeline, source) of every trigger."""
    rows = await db.fetch("SELECT name, pipeline, source FROM triggers ORDER BY name")
    return [(row["name"], row["pipeline"], row["source"]) for row in rows]


async def save_state(db: Db, trigger: str, state: dict[str, Any]) -> None:
    """Replaces the trigger's source state (``updated_at`` stays: it tracks the document)."""
    await db.execute("UPDATE triggers SET state = $2 WHERE name = $1", trigger, state)


CHANGES_CHANNEL = "sluice_triggers"
"""NOTIFY channel on which a standby daemon's API tells the leader that triggers changed; the payload
is ``datastores`` when a datastore changed too (files triggers' roots may have moved)."""


async def notify_changed(db: Db, *, datastores: bool = False) -> None:
    """Wakes the leader's reconcile (a hint: it reads the store every few seconds anyway)."""
    await db.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, "datastores" if datastores else "triggers")


async def finished_runs(
    db: Db, trigger: str, pipeline: str, statuses: Sequence[str], after: datetime, *, limit: int
) -> list[RunRecord]:
    """Up to ``limit`` runs of ``pipeline`` that ended with one of ``statuses`` after ``after`` and that
    ``trigger`` has no event for yet (its dedupe key is the run id), oldest end first."""
    rows = await db.fetch(
        f"""
        SELECT {qualified(RUN_COLUMNS, "r")}
        FROM runs r
        WHERE r.pipeline = $2 AND r.status = ANY($3::text[]) AND r.finished_at > $4
          AND NOT EXISTS (SELECT 1 FROM events e WHERE e.trigger = $1 AND e.dedupe_key = r.id::text)
        ORDER BY r.finished_at, r.id LIMIT $5
        """,
        trigger,
        pipeline,
        list(statuses),
        after,
        limit,
    )
    return [RunRecord.from_row(row) for row in rows]
