"""What running triggers need from the store: recording an event and its outcome (the exactly-once
statement), each trigger's source state, and the finished runs a ``run`` trigger catches up on.

Recording runs in the caller's transaction: :func:`record_event` inserts the event row first
(unique on trigger + dedupe key, so a repeat collides here and inserts nothing) with the outcome
``run`` and the id the caller will give its run (the common case costs no second write; the run id's
foreign key is deferred to the commit); the caller creates the run in the same transaction, and
:func:`settle_events` rewrites the outcome of the events that did not become a run, before the commit.
The trigger row is not written in that transaction: :func:`touch_trigger` moves ``last_event_at``
after it, so that concurrent events of one trigger do not queue on its row lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from daemon.store.db import Db
from daemon.store.runs import RunRecord


@dataclass(frozen=True, slots=True)
class Recorded:
    """An event just inserted (``event_id``), or a repeat (``event_id`` None), with its trigger as the
    transaction sees it: ``version`` is the pin, else the pipeline's default version now."""

    event_id: int | None
    pipeline: str
    pinned: bool
    version: int
    version_status: str
    paused: bool
    bindings: dict[str, Any]


_RECORD = """
WITH t AS (
    SELECT t.pipeline, t.version IS NOT NULL AS pinned, t.paused, t.spec -> 'params' AS bindings,
           coalesce(t.version, p.default_version) AS version
    FROM triggers t JOIN pipelines p ON p.name = t.pipeline
    WHERE t.name = $1
), e AS (
    INSERT INTO events (id, trigger, dedupe_key, received_at, fields, outcome, run_id)
    SELECT n.id, $1, $2, $3, $4::jsonb || jsonb_build_object('id', n.id), 'run', $5
    FROM t, LATERAL (SELECT nextval('events_id_seq') AS id) n
    ON CONFLICT (trigger, dedupe_key) DO NOTHING
    RETURNING id
)
SELECT t.*, v.status AS version_status, (SELECT id FROM e) AS event_id
FROM t JOIN versions v ON v.pipeline = t.pipeline AND v.version = t.version
"""


async def record_event(
    conn: asyncpg.Connection,
    trigger: str,
    dedupe_key: str,
    received_at: datetime,
    fields: dict[str, Any],
    run_id: UUID,
) -> Recorded | None:
    """Inserts the event (its ``id`` added to ``fields``) unless the trigger already has one with
    ``dedupe_key``, and reads the trigger, in one statement; None when the trigger does not exist.
    The event is recorded as having become run ``run_id``: the caller inserts that run in the same
    transaction, or settles the event otherwise (:func:`settle_events`)."""
    row = await conn.fetchrow(_RECORD, trigger, dedupe_key, received_at, fields, run_id)
    if row is None:
        return None
    return Recorded(
        event_id=row["event_id"],
        pipeline=row["pipeline"],
        pinned=row["pinned"],
        version=row["version"],
        version_status=row["version_status"],
        paused=row["paused"],
        bindings=row["bindings"] or {},
    )


@dataclass(frozen=True, slots=True)
class Settled:
    """An event that did not become a run: its outcome (``rejected`` or ``skipped``) and why."""

    event_id: int
    outcome: str
    reason: str


async def settle_events(conn: asyncpg.Connection, settled: Sequence[Settled]) -> None:
    """Writes what became of events that did not become a run, in the transaction that recorded them."""
    if not settled:
        return
    await conn.execute(
        """
        UPDATE events e SET outcome = x.outcome, run_id = NULL, reason = x.reason
        FROM unnest($1::bigint[], $2::text[], $3::text[]) AS x(id, outcome, reason)
        WHERE e.id = x.id
        """,
        [item.event_id for item in settled],
        [item.outcome for item in settled],
        [item.reason for item in settled],
    )


async def touch_trigger(db: Db, trigger: str, at: datetime) -> None:
    """Moves the trigger's ``last_event_at`` forward to ``at`` (never back)."""
    await db.execute(
        "UPDATE triggers SET last_event_at = $2 "
        "WHERE name = $1 AND (last_event_at IS NULL OR last_event_at < $2)",
        trigger,
        at,
    )


async def find_event(db: Db, trigger: str, dedupe_key: str) -> tuple[int, UUID | None] | None:
    """The id and run id of the trigger's event with ``dedupe_key``, or None."""
    row = await db.fetchrow(
        "SELECT id, run_id FROM events WHERE trigger = $1 AND dedupe_key = $2", trigger, dedupe_key
    )
    return None if row is None else (row["id"], row["run_id"])


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
        """
        SELECT r.id, r.pipeline, r.version, r.status, r.params, r.reuse, r.trigger, r.event_id,
               r.idempotency_key, r.resolution, r.reason, r.held, r.created_at, r.started_at,
               r.finished_at
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
