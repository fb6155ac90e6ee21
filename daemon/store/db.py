"""Connections: the pool, the JSON codecs every connection gets, and transactions over either; and
how a record's JSON shape writes a timestamp."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import msgspec

from daemon.errors import Unavailable

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
"""What every store function takes first: a pool (each call borrows a connection) or a connection,
so that callers can compose several store calls in one transaction of their own."""

DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""What a lost, unreachable or refusing server raises (a bug in a statement raises these too)."""


def iso(value: datetime | None) -> str | None:
    """A timestamp as records' JSON shapes write it (ISO 8601), None as None."""
    return None if value is None else value.isoformat()


def _encode_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    """Installs the JSON codecs: ``json``/``jsonb`` columns read and take Python values, not text."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=_encode_json, decoder=msgspec.json.decode, schema="pg_catalog"
        )


class HeldConnection:
    """A pool connection that one hot-path user (the dispatcher, an ingest committer) keeps between
    uses: no pool acquire and release per use, and its statements planned once. Their plans do not
    depend on the arrays they are given, so ``force_generic_plan`` spares each execution a planning
    of the whole statement, which for a statement of several CTEs costs more than running it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None

    async def get(self) -> asyncpg.Connection:
        """The connection; a new one when the last was closed (the server went away)."""
        if self._conn is not None and self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._pool.release(self._conn)
            self._conn = None
        if self._conn is None:
            conn = await self._pool.acquire()
            try:
                await conn.execute("SET plan_cache_mode = force_generic_plan")
            except BaseException:
                await self._pool.release(conn)
                raise
            self._conn = conn
        return self._conn

    async def release(self) -> None:
        """Gives the connection back to the pool, as the pool lent it."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):
            await conn.execute("RESET plan_cache_mode")  # the pool does not reset sessions
        with contextlib.suppress(Exception):
            await self._pool.release(conn)


def describe_dsn(dsn: str) -> str:
    """``host:port/database`` of a DSN, without user or password, for messages."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = parts.hostname or query.get("host", ["localhost"])[0]
    port = parts.port or query.get("port", [5432])[0]
    database = unquote(parts.path.lstrip("/")) or query.get("dbname", [""])[0]
    return f"{host}:{port}/{database}"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Resets nothing more than asyncpg always does (roll back an open transaction, drop listeners).

    The default reset sends ``RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()`` on every
    release: a server round trip on every pool use, the hot path included. The daemon keeps no such
    session state on pooled connections (its advisory locks and ``SET LOCAL`` are transaction-scoped),
    so there is nothing for it to undo. Code that sets session state must undo it itself.
    """


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 10.0
) -> asyncpg.Pool:
    """A pool whose connections have the JSON codecs installed.

    Each connection attempt is bounded by ``connect_timeout`` seconds.

    Raises:
        Unavailable: the server cannot be reached, refuses the login or lacks the database; the
            message names host, port and database, never the password.
    """
    try:
        return await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            init=init_connection,
            reset=_keep_session,
        )
    except DATABASE_ERRORS as exc:
        raise _unavailable(dsn, exc) from exc


async def connect(
    dsn: str, *, connect_timeout: float = 10.0, application_name: str | None = None
) -> asyncpg.Connection:
    """One connection of its own, outside the pool, with the JSON codecs: for session state that
    must not be handed to the pool's next borrower (the leader election's advisory lock).

    Raises:
        Unavailable: as :func:`create_pool`.
    """
    settings = {} if application_name is None else {"application_name": application_name[:63]}
    try:
        conn = await asyncpg.connect(dsn, timeout=connect_timeout, server_settings=settings)
    except DATABASE_ERRORS as exc:
        raise _unavailable(dsn, exc) from exc
    try:
        await init_connection(conn)
    except BaseException as exc:
        conn.terminate()
        if isinstance(exc, DATABASE_ERRORS):
            raise _unavailable(dsn, exc) from exc
        raise
    return conn


def _unavailable(dsn: str, exc: BaseException) -> Unavailable:
    reason = str(exc) or type(exc).__name__
    if password := urlsplit(dsn).password:
        reason = reason.replace(password, "***")
    return Unavailable(f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {reason}")


async def ping(db: Db) -> None:
    """A round trip to the server (raises what a lost server raises: :data:`DATABASE_ERRORS`)."""
    await db.fetchval("SELECT 1")


@asynccontextmanager
async def transaction(db: Db) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on ``db``: a borrowed pool connection, or a savepoint when ``db`` is already in one."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            yield conn
    else:
        async with db.transaction():
            yield db
