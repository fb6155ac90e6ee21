"""Schema migrations: the numbered SQL files in ``migrations/``, applied in order at start."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from daemon.errors import Unavailable

# Any fixed key works; it only has to be the same for every daemon sharing the database.
MIGRATION_LOCK_KEY = 0x51_1CE_0001
LOCK_TIMEOUT = "60s"

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<title>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The migrations shipped with the package, by version.

    Raises:
        RuntimeError: two files share a version number (a packaging bug).
    """
    found: dict[int, Migration] = {}
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        if match := _FILE_NAME.match(entry.name):
            version = int(match["version"])
            if version in found:
                raise RuntimeError(
                    f"two migrations have version {version}: {found[version].name}, {entry.name}"
                )
            found[version] = Migration(version, entry.name.removesuffix(".sql"), entry.read_text("utf-8"))
    return [found[version] for version in sorted(found)]


async def _lock(conn: asyncpg.Connection) -> None:
    """Takes the migration lock for the current transaction, waiting at most ``LOCK_TIMEOUT``."""
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Applies the pending migrations in order and returns their names (empty when none was pending).

    Each migration runs in its own transaction under a transaction-level advisory lock, and is
    recorded in ``schema_migrations`` by the same transaction, so daemons starting at the same time
    apply each migration exactly once, and a failed migration leaves no trace. ``conn`` must not be
    inside a transaction.

    Raises:
        Unavailable: another process held the migration lock, or a lock a migration needs, for longer
            than ``LOCK_TIMEOUT``.
        asyncpg.PostgresError: a migration failed (a bug in the migration, not a user error).
    """
    applied: list[str] = []
    try:
        async with conn.transaction():
            await _lock(conn)
            await conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await _lock(conn)
                # Another daemon may have applied it while this one waited for the lock.
                if await conn.fetchval(
                    "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
                ):
                    continue
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration.name)
    except asyncpg.LockNotAvailableError as exc:
        raise Unavailable(
            f"migrations are blocked: a lock was held by another process for over {LOCK_TIMEOUT}"
        ) from exc
    return applied
