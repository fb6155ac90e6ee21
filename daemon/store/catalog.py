"""Datastores and triggers: named documents that ``apply`` upserts.

An upsert reports what it did: ``created``, ``updated`` (some field the document sets changed) or
``unchanged``. Comparisons of ``spec`` are by JSON value, not by text or key order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

import asyncpg

from daemon.errors import Invalid, NotFound
from daemon.store.db import Db, iso, transaction

UpsertResult = Literal["created", "updated", "unchanged"]
TriggerSource = Literal["cron", "files", "nats", "run"]
TRIGGER_SOURCES: tuple[TriggerSource, ...] = get_args(TriggerSource)


@dataclass(frozen=True, slots=True)
class DatastoreRecord:
    """A named storage location; ``spec`` holds the type's settings (``{"path": …}`` for ``local``)."""

    name: str
    type: str
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> DatastoreRecord:
        return cls(
            name=row["name"],
            type=row["type"],
            spec=row["spec"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            **self.spec,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class TriggerRecord:
    """A binding from an event source to a pipeline (its default version when ``version`` is None).

    ``state`` is the source's own progress (last cron fire, file watermarks …); it is internal and
    not part of :meth:`to_json`.
    """

    name: str
    pipeline: str
    version: int | None
    source: TriggerSource
    spec: dict[str, Any]
    paused: bool
    state: dict[str, Any]
    last_event_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> TriggerRecord:
        return cls(
            name=row["name"],
            pipeline=row["pipeline"],
            version=row["version"],
            source=row["source"],
            spec=row["spec"],
            paused=row["paused"],
            state=row["state"],
            last_event_at=row["last_event_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def to_json(self) -> dict[str, Any]:
        """The contract's ``trigger`` shape, with ``created_at`` and ``updated_at``."""
        return {
            "name": self.name,
            "pipeline": self.pipeline,
            "version": self.version,
            "source": self.source,
            "paused": self.paused,
            "spec": self.spec,
            "last_event_at": iso(self.last_event_at),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


_DATASTORE_COLUMNS = "name, type, spec, created_at, updated_at"
_TRIGGER_COLUMNS = (
    "name, pipeline, version, source, spec, paused, state, last_event_at, created_at, updated_at"
)


async def upsert_datastore(
    db: Db, name: str, type: str, spec: dict[str, Any]
) -> tuple[DatastoreRecord, UpsertResult]:
    """Creates the datastore ``name`` or replaces its type and spec; returns it and what was done."""
    # `xmax = 0` holds only for a freshly inserted row: it tells an insert from an update in one
    # statement, without a read-then-write race. An unchanged row is not updated and returns nothing.
    row = await db.fetchrow(
        f"""
        INSERT INTO datastores AS d (name, type, spec) VALUES ($1, $2, $3)
        ON CONFLICT (name) DO UPDATE SET type = excluded.type, spec = excluded.spec, updated_at = now()
        WHERE (d.type, d.spec) IS DISTINCT FROM (excluded.type, excluded.spec)
        RETURNING {_DATASTORE_COLUMNS}, (xmax = 0) AS created
        """,
        name,
        type,
        spec,
    )
    if row is None:
        return await _get_existing_datastore(db, name), "unchanged"
    return DatastoreRecord.from_row(row), "created" if row["created"] else "updated"


async def _get_existing_datastore(db: Db, name: str) -> DatastoreRecord:
    record = await get_datastore(db, name)
    if record is None:
        raise NotFound(f"datastore {name} does not exist")
    return record


async def list_datastores(
    db: Db, *, limit: int | None = None, after: str | None = None
) -> list[DatastoreRecord]:
    """Up to ``limit`` datastores (None: all of them) by name, starting after the name ``after``
    (keyset pagination)."""
    rows = await db.fetch(
        f"SELECT {_DATASTORE_COLUMNS} FROM datastores "
        "WHERE $1::text IS NULL OR name > $1 ORDER BY name LIMIT $2",
        after,
        limit,
    )
    return [DatastoreRecord.from_row(row) for row in rows]


async def datastore_names(db: Db) -> set[str]:
    """The names of every datastore (they are few: one per storage location)."""
    return {row["name"] for row in await db.fetch("SELECT name FROM datastores")}


async def get_datastore(db: Db, name: str) -> DatastoreRecord | None:
    """The datastore ``name``, or None."""
    row = await db.fetchrow(f"SELECT {_DATASTORE_COLUMNS} FROM datastores WHERE name = $1", name)
    return None if row is None else DatastoreRecord.from_row(row)


async def upsert_trigger(
    db: Db, *, name: str, pipeline: str, version: int | None, source: str, spec: dict[str, Any]
) -> tuple[TriggerRecord, UpsertResult]:
    """Creates the trigger ``name`` or replaces what its document sets; returns it and what was done.

    ``paused``, ``state`` and ``last_event_at`` of an existing trigger are kept.

    Raises:
        Invalid: ``source`` is not one of :data:`TRIGGER_SOURCES`.
        NotFound: the pipeline, or the pinned version of it, does not exist.
    """
    if source not in TRIGGER_SOURCES:
        raise Invalid(f"unknown trigger source {source!r}; expected one of {', '.join(TRIGGER_SOURCES)}")
    try:
        # A savepoint, so that a caller's own transaction survives the foreign key error.
        async with transaction(db) as conn:
            row = await conn.fetchrow(
                f"""
                INSERT INTO triggers AS t (name, pipeline, version, source, spec) VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (name) DO UPDATE
                SET pipeline = excluded.pipeline, version = excluded.version, source = excluded.source,
                    spec = excluded.spec, updated_at = now()
                WHERE (t.pipeline, t.version, t.source, t.spec)
                    IS DISTINCT FROM (excluded.pipeline, excluded.version, excluded.source, excluded.spec)
                RETURNING {_TRIGGER_COLUMNS}, (xmax = 0) AS created
                """,
                name,
                pipeline,
                version,
                source,
                spec,
            )
    except asyncpg.ForeignKeyViolationError as exc:
        if exc.constraint_name == "triggers_version_fkey":
            raise NotFound(f"trigger {name}: pipeline {pipeline} has no version {version}") from exc
        raise NotFound(f"trigger {name}: pipeline {pipeline} does not exist") from exc
    if row is None:
        return await _get_existing_trigger(db, name), "unchanged"
    return TriggerRecord.from_row(row), "created" if row["created"] else "updated"


async def _get_existing_trigger(db: Db, name: str) -> TriggerRecord:
    record = await get_trigger(db, name)
    if record is None:
        raise NotFound(f"trigger {name} does not exist")
    return record


async def list_triggers(db: Db, *, limit: int, after: str | None = None) -> list[TriggerRecord]:
    """Up to ``limit`` triggers by name, starting after the name ``after`` (keyset pagination)."""
    rows = await db.fetch(
        f"SELECT {_TRIGGER_COLUMNS} FROM triggers WHERE $1::text IS NULL OR name > $1 ORDER BY name LIMIT $2",
        after,
        limit,
    )
    return [TriggerRecord.from_row(row) for row in rows]


async def get_trigger(db: Db, name: str) -> TriggerRecord | None:
    """The trigger ``name``, or None."""
    row = await db.fetchrow(f"SELECT {_TRIGGER_COLUMNS} FROM triggers WHERE name = $1", name)
    return None if row is None else TriggerRecord.from_row(row)


async def set_trigger_paused(db: Db, name: str, paused: bool) -> TriggerRecord:
    """Pauses or resumes the trigger ``name`` and returns it (a no-op when it already is).

    Raises:
        NotFound: no trigger has this name.
    """
    row = await db.fetchrow(
        f"""
        UPDATE triggers SET paused = $2, updated_at = CASE WHEN paused = $2 THEN updated_at ELSE now() END
        WHERE name = $1
        RETURNING {_TRIGGER_COLUMNS}
        """,
        name,
        paused,
    )
    if row is None:
        raise NotFound(f"trigger {name} does not exist")
    return TriggerRecord.from_row(row)


async def delete_trigger(db: Db, name: str) -> bool:
    """Deletes the trigger ``name`` with its events (runs keep its name); False when there was none."""
    return await db.fetchval("DELETE FROM triggers WHERE name = $1 RETURNING true", name) is not None
