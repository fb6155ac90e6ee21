"""The advisory lock of a leader election (:mod:`daemon.runtime.leader`), on the election's own session: take
it, name the session that holds it, and bound how long the server keeps a silent session (and so
the lock)."""

from __future__ import annotations

import asyncpg

# The holder of an advisory lock on a bigint key: pg_locks splits the key into classid (high 32
# bits) and objid (low 32 bits), with objsubid 1.
_HOLDER = """
SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
"""


async def try_lock(conn: asyncpg.Connection, key: int) -> bool:
    """Takes the session-level advisory lock ``key`` when no other session holds it."""
    return await conn.fetchval("SELECT pg_try_advisory_lock($1)", key)


async def lock_holder(conn: asyncpg.Connection, key: int) -> str | None:
    """The ``application_name`` of the session that holds the advisory lock ``key`` (None: none does,
    or it has no name)."""
    return await conn.fetchval(_HOLDER, *_halves(key))


async def set_idle_session_timeout(conn: asyncpg.Connection, timeout_ms: int) -> None:
    """The server ends this session after ``timeout_ms`` idle (PostgreSQL 14+; older servers raise
    ``asyncpg.UndefinedObjectError``)."""
    await conn.execute(f"SET idle_session_timeout = {int(timeout_ms)}")


def _halves(key: int) -> tuple[int, int]:
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF
