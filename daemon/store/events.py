"""What triggers saw: one row per event, with what became of it (a run, or why none)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg

from daemon.store.db import Db

EVENT_COLUMNS = "id, trigger, dedupe_key, received_at, fields, outcome, run_id, reason"
EventOutcome = Literal["run", "duplicate", "rejected", "skipped"]


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    trigger: str
    dedupe_key: str
    received_at: datetime
    fields: dict[str, Any]
    outcome: EventOutcome
    run_id: UUID | None
    reason: str | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> EventRecord:
        return cls(**dict(row))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "trigger": self.trigger,
            "dedupe_key": self.dedupe_key,
            "received_at": self.received_at.isoformat(),
            "fields": self.fields,
            "outcome": self.outcome,
            "run_id": None if self.run_id is None else str(self.run_id),
            "reason": self.reason,
        }


async def list_events(db: Db, trigger: str, *, limit: int, before: int | None = None) -> list[EventRecord]:
    """Up to ``limit`` events of ``trigger``, newest first, with ids below ``before`` when given."""
    rows = await db.fetch(
        f"""
        SELECT {EVENT_COLUMNS} FROM events
        WHERE trigger = $1 AND ($2::bigint IS NULL OR id < $2)
        ORDER BY id DESC LIMIT $3
        """,
        trigger,
        before,
        limit,
    )
    return [EventRecord.from_row(row) for row in rows]


async def get_event(db: Db, event_id: int) -> EventRecord | None:
    row = await db.fetchrow(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = $1", event_id)
    return None if row is None else EventRecord.from_row(row)
