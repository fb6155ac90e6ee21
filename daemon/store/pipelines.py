"""Pipelines and their versions: publishing, reading, the default version and version status.

Versions are numbered 1, 2, 3 … per pipeline; a version is immutable except for its status. Publishing
locks the pipeline row, so concurrent publishes of one pipeline are serialised and never share a number.
Functions that write run in a transaction of their own, or in a savepoint of the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

import asyncpg

from daemon.errors import Conflict, Invalid, NotFound
from daemon.store.db import Db, transaction

VersionStatus = Literal["active", "deprecated", "disabled"]
VERSION_STATUSES: tuple[VersionStatus, ...] = get_args(VersionStatus)


@dataclass(frozen=True, slots=True)
class PipelineRecord:
    """A pipeline with a summary of its versions; ``description`` comes from the default version."""

    name: str
    default_version: int
    latest_version: int
    version_count: int
    description: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> PipelineRecord:
        return cls(
            name=row["name"],
            default_version=row["default_version"],
            latest_version=row["latest_version"],
            version_count=row["version_count"],
            description=row["description"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "default_version": self.default_version,
            "latest_version": self.latest_version,
            "version_count": self.version_count,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One published version of a pipeline."""

    pipeline: str
    version: int
    digest: str
    source_digest: str | None
    status: VersionStatus
    is_default: bool
    spec: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> VersionRecord:
        return cls(
            pipeline=row["pipeline"],
            version=row["version"],
            digest=row["digest"],
            source_digest=row["source_digest"],
            status=row["status"],
            is_default=row["is_default"],
            spec=row["spec"],
            created_at=row["created_at"],
        )

    def to_json(self) -> dict[str, Any]:
        """The contract's ``version`` shape."""
        return {
            "pipeline": self.pipeline,
            "version": self.version,
            "digest": self.digest,
            "status": self.status,
            "is_default": self.is_default,
            "created_at": self.created_at.isoformat(),
            "spec": self.spec,
            "source_digest": self.source_digest,
        }


_SELECT_PIPELINES = """
SELECT p.name, p.default_version, p.created_at, p.updated_at,
       d.spec ->> 'description' AS description,
       s.latest_version, s.version_count
FROM pipelines p
JOIN versions d ON d.pipeline = p.name AND d.version = p.default_version
CROSS JOIN LATERAL (
    SELECT max(v.version) AS latest_version, count(*)::int AS version_count
    FROM versions v WHERE v.pipeline = p.name
) s
"""

_SELECT_VERSIONS = """
SELECT v.pipeline, v.version, v.digest, v.source_digest, v.status, v.spec, v.created_at,
       v.version = p.default_version AS is_default
FROM versions v
JOIN pipelines p ON p.name = v.pipeline
"""


async def _lock_pipeline(conn: asyncpg.Connection, pipeline: str) -> int:
    """Locks the pipeline row until the transaction ends and returns its default version.

    Raises:
        NotFound: no pipeline has this name.
    """
    default = await conn.fetchval(
        "SELECT default_version FROM pipelines WHERE name = $1 FOR UPDATE", pipeline
    )
    if default is None:
        raise NotFound(f"pipeline {pipeline} does not exist")
    return default


async def _existing_version(conn: asyncpg.Connection, pipeline: str, version: int) -> VersionRecord:
    """The version, read after :func:`_lock_pipeline`.

    Raises:
        NotFound: the pipeline has no such version.
    """
    row = await conn.fetchrow(
        f"{_SELECT_VERSIONS} WHERE v.pipeline = $1 AND v.version = $2", pipeline, version
    )
    if row is None:
        raise NotFound(f"pipeline {pipeline} has no version {version}")
    return VersionRecord.from_row(row)


async def publish_version(
    db: Db,
    *,
    pipeline: str,
    digest: str,
    source_digest: str | None,
    spec: dict[str, Any],
    make_default: bool,
) -> tuple[VersionRecord, bool]:
    """Publishes ``spec`` as the next version of ``pipeline``, creating the pipeline if it is new.

    ``digest`` and ``source_digest`` are ``sha256:`` and 64 lowercase hex digits (a CHECK enforces it).

    Idempotent by digest: when the pipeline already has a version with ``digest``, that version is
    returned unchanged with ``False`` (``make_default`` is then ignored). Otherwise the new version
    gets the next number, becomes the default when ``make_default`` is true or it is the first
    version, and is returned with ``True``. Needs READ COMMITTED isolation (PostgreSQL's default).
    """
    async with transaction(db) as conn:
        # A new pipeline points at version 1 at once; the deferred foreign key is checked at commit.
        await conn.execute(
            "INSERT INTO pipelines (name, default_version) VALUES ($1, 1) ON CONFLICT (name) DO NOTHING",
            pipeline,
        )
        await _lock_pipeline(conn, pipeline)
        row = await conn.fetchrow(
            f"{_SELECT_VERSIONS} WHERE v.pipeline = $1 AND v.digest = $2", pipeline, digest
        )
        if row is not None:
            return VersionRecord.from_row(row), False
        number = await conn.fetchval(
            "SELECT coalesce(max(version), 0) + 1 FROM versions WHERE pipeline = $1", pipeline
        )
        await conn.execute(
            """
            INSERT INTO versions (pipeline, version, digest, source_digest, spec)
            VALUES ($1, $2, $3, $4, $5)
            """,
            pipeline,
            number,
            digest,
            source_digest,
            spec,
        )
        await conn.execute(
            """
            UPDATE pipelines
            SET default_version = CASE WHEN $2 THEN $3 ELSE default_version END, updated_at = now()
            WHERE name = $1
            """,
            pipeline,
            make_default,
            number,
        )
        return await _existing_version(conn, pipeline, number), True


async def list_pipelines(db: Db, *, limit: int, after: str | None = None) -> list[PipelineRecord]:
    """Up to ``limit`` pipelines by name, starting after the name ``after`` (keyset pagination)."""
    rows = await db.fetch(
        f"{_SELECT_PIPELINES} WHERE $1::text IS NULL OR p.name > $1 ORDER BY p.name LIMIT $2", after, limit
    )
    return [PipelineRecord.from_row(row) for row in rows]


async def pipeline_names(db: Db) -> list[str]:
    return [row["name"] for row in await db.fetch("SELECT name FROM pipelines ORDER BY name")]


async def get_pipeline(db: Db, name: str) -> PipelineRecord | None:
    """The pipeline ``name``, or None."""
    row = await db.fetchrow(f"{_SELECT_PIPELINES} WHERE p.name = $1", name)
    return None if row is None else PipelineRecord.from_row(row)


async def list_versions(
    db: Db, pipeline: str, *, limit: int, before: int | None = None
) -> list[VersionRecord]:
    """Up to ``limit`` versions of ``pipeline``, newest first, numbered below ``before`` when given.

    Raises:
        NotFound: no pipeline has this name.
    """
    rows = await db.fetch(
        f"""{_SELECT_VERSIONS}
        WHERE v.pipeline = $1 AND ($2::int IS NULL OR v.version < $2)
        ORDER BY v.version DESC LIMIT $3
        """,
        pipeline,
        before,
        limit,
    )
    if not rows and not await pipeline_exists(db, pipeline):
        raise NotFound(f"pipeline {pipeline} does not exist")
    return [VersionRecord.from_row(row) for row in rows]


async def pipeline_exists(db: Db, pipeline: str) -> bool:
    return bool(await db.fetchval("SELECT 1 FROM pipelines WHERE name = $1", pipeline))


async def is_default(db: Db, pipeline: str, version: int) -> bool:
    """Whether ``version`` is the default version of ``pipeline`` now."""
    query = "SELECT 1 FROM pipelines WHERE name = $1 AND default_version = $2"
    return bool(await db.fetchval(query, pipeline, version))


async def get_version(db: Db, pipeline: str, version: int | None = None) -> VersionRecord | None:
    """Version ``version`` of ``pipeline`` (its default version when None), or None."""
    if version is None:
        row = await db.fetchrow(
            f"{_SELECT_VERSIONS} WHERE v.pipeline = $1 AND v.version = p.default_version", pipeline
        )
    else:
        row = await db.fetchrow(
            f"{_SELECT_VERSIONS} WHERE v.pipeline = $1 AND v.version = $2", pipeline, version
        )
    return None if row is None else VersionRecord.from_row(row)


async def set_default(db: Db, pipeline: str, version: int) -> VersionRecord:
    """Makes ``version`` the default version of ``pipeline`` and returns it (a no-op when it already is).

    Raises:
        NotFound: the pipeline or the version does not exist.
        Conflict: the version is disabled.
    """
    async with transaction(db) as conn:
        await _lock_pipeline(conn, pipeline)
        record = await _existing_version(conn, pipeline, version)
        if record.is_default:
            return record
        if record.status == "disabled":
            raise Conflict(
                f"version {version} of {pipeline} is disabled; enable it before making it the default"
            )
        await conn.execute(
            "UPDATE pipelines SET default_version = $2, updated_at = now() WHERE name = $1", pipeline, version
        )
        return await _existing_version(conn, pipeline, version)


async def set_status(db: Db, pipeline: str, version: int, status: str) -> VersionRecord:
    """Sets the status of ``version`` of ``pipeline`` and returns the version (a no-op when unchanged).

    Raises:
        Invalid: ``status`` is not one of :data:`VERSION_STATUSES`.
        NotFound: the pipeline or the version does not exist.
        Conflict: disabling the default version.
    """
    if status not in VERSION_STATUSES:
        raise Invalid(f"unknown version status {status!r}; expected one of {', '.join(VERSION_STATUSES)}")
    async with transaction(db) as conn:
        await _lock_pipeline(conn, pipeline)
        record = await _existing_version(conn, pipeline, version)
        if record.status == status:
            return record
        if status == "disabled" and record.is_default:
            raise Conflict(
                f"version {version} is the default of {pipeline} and cannot be disabled; "
                "make another version the default first"
            )
        await conn.execute(
            "UPDATE versions SET status = $3 WHERE pipeline = $1 AND version = $2", pipeline, version, status
        )
        return await _existing_version(conn, pipeline, version)
