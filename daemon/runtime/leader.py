"""Leader election: with several daemons on one database, one at a time runs what must run once
(the trigger sources; DESIGN.md "High availability").

Each daemon keeps a session of its own (a dedicated connection, never a pooled one: the lock belongs
to the session, and a pooled connection would hand it to its next borrower) and tries
``pg_try_advisory_lock`` on a key derived from the election's name, at once and then every
``interval`` seconds. The daemon that gets the lock leads: ``lead(stack, conn)`` starts what only
the leader runs and registers its teardown on ``stack``. A leader pings its session every interval
(and asyncpg's termination listener wakes it early); when the session is gone the lock went with it,
so the term ends — ``stack`` closes — and the daemon follows again on a new session. At shutdown the
term ends first, then the session closes: the next leader starts only after this one stopped.

A leader that goes silent without its session closing (its host died, the network split) keeps the
lock only until the server ends the idle session: ``idle_session_timeout`` (PostgreSQL 14+) is set
longer than one interval plus the leader's own ping timeout, so the old leader has stepped down
before another can take the lock.

Not consensus of our own: PostgreSQL decides, and at most one session holds the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from daemon.errors import Unavailable
from daemon.metrics import LEADER
from daemon.runtime.tasks import Supervisor
from daemon.store import leadership
from daemon.store.db import DATABASE_ERRORS, connect, ping

log = structlog.get_logger(__name__)

TRIGGERS = "sluice.triggers"
"""The election whose leader runs the trigger sources."""

PING_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0
APPLICATION_PREFIX = "sluice-election "

Lead = Callable[[contextlib.AsyncExitStack, asyncpg.Connection], Awaitable[None]]

_SESSION_ERRORS = (*DATABASE_ERRORS, Unavailable)


def lock_key(name: str) -> int:
    """The advisory lock key of election ``name``: the same in every daemon, as a signed bigint."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def daemon_identity() -> str:
    """How other daemons name this one when it leads: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def idle_session_timeout_s(interval: float) -> float:
    """How long the server keeps a silent session (and its lock): longer than the time a leader
    takes to notice it lost the server (one interval, then a ping that times out), twice over."""
    return 2 * (interval + PING_TIMEOUT_S)


class Election:
    """One daemon's side of election ``name``. ``leading`` says whether it leads now; ``leader`` names
    the daemon that led when it last looked (itself while leading; None when unknown)."""

    def __init__(self, dsn: str, *, name: str, interval: float, lead: Lead, identity: str) -> None:
        self.name = name
        self.key = lock_key(name)
        self.interval = interval
        self.identity = identity
        self.leader: str | None = None
        self._dsn = dsn
        self._lead = lead
        self._conn: asyncpg.Connection | None = None
        self._term: contextlib.AsyncExitStack | None = None
        self._wake = asyncio.Event()
        self._supervisor = Supervisor()
        self._failing = False
        self._following: str | None = None

    @property
    def leading(self) -> bool:
        """Whether it leads now: it holds a term."""
        return self._term is not None

    @classmethod
    async def start(
        cls,
        stack: contextlib.AsyncExitStack,
        dsn: str,
        *,
        name: str,
        interval: float,
        lead: Lead,
        identity: str | None = None,
    ) -> Election:
        """Tries once at once (a lone daemon leads before this returns), then keeps trying, or checking
        its lead, every ``interval`` seconds, on a session of its own to the database at ``dsn``.
        ``stack`` ends the term, then the session."""
        identity = identity or daemon_identity()
        election = cls(dsn, name=name, interval=interval, lead=lead, identity=identity)
        stack.push_async_callback(election._stop)
        await election.run_iteration()
        election._supervisor.start(f"election:{name}", election._loop)
        return election

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.run_iteration()

    async def run_iteration(self) -> None:
        """One look: a leader checks that its session (and so its lock) is still there, and steps down
        when it is not; a follower tries to take the lock. Never raises for a server that cannot be
        reached: the next look tries again."""
        if self.leading:
            if (reason := await self._ping()) is not None:
                await self._step_down(reason)
            return
        try:
            conn = await self._session()
            async with asyncio.timeout(PING_TIMEOUT_S):
                acquired = await leadership.try_lock(conn, self.key)
                holder = None if acquired else await leadership.lock_holder(conn, self.key)
        except _SESSION_ERRORS as exc:
            if not self._failing:
                error = str(exc) or type(exc).__name__
                log.warning("leader_election_failed", election=self.name, error=error)
            self._failing = True
            await self._close_session()
            return
        if self._failing:
            log.info("leader_election_recovered", election=self.name)
            self._failing = False
        if acquired:
            await self._take_lead(conn)
            return
        self.leader = holder.removeprefix(APPLICATION_PREFIX) if holder else None
        if self._following != (self.leader or ""):
            self._following = self.leader or ""
            log.info("leader_following", election=self.name, leader=self.leader)

    async def _take_lead(self, conn: asyncpg.Connection) -> None:
        term = contextlib.AsyncExitStack()
        try:
            await self._lead(term, conn)
        except BaseException as exc:
            # What started is stopped, and the lock goes back for another daemon to try.
            await _close_term(term, self.name)
            await self._close_session()
            if not isinstance(exc, Exception):
                raise
            log.exception("leader_start_failed", election=self.name)
            return
        self._term = term
        self.leader = self.identity
        self._following = None
        LEADER.set(1)
        log.info("leader_acquired", election=self.name, daemon=self.identity)

    async def _step_down(self, reason: str) -> None:
        """The session is gone (and the lock with it): stop leading at once."""
        log.warning("leader_lost", election=self.name, reason=reason)
        await self._end_term()
        await self._close_session()

    async def _end_term(self) -> None:
        self.leader = None
        LEADER.set(0)
        term, self._term = self._term, None
        if term is not None:
            await _close_term(term, self.name)

    async def _ping(self) -> str | None:
        """Why the leader's session is gone, or None while it answers."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return "session closed"
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await ping(conn)
        except TimeoutError:
            return f"the server did not answer within {PING_TIMEOUT_S:g}s"
        except _SESSION_ERRORS as exc:
            return str(exc) or type(exc).__name__
        return None

    async def _session(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        conn = await connect(
            self._dsn, connect_timeout=PING_TIMEOUT_S, application_name=APPLICATION_PREFIX + self.identity
        )
        try:
            timeout_ms = int(idle_session_timeout_s(self.interval) * 1000)
            async with asyncio.timeout(PING_TIMEOUT_S):
                try:
                    await leadership.set_idle_session_timeout(conn, timeout_ms)
                except asyncpg.UndefinedObjectError:
                    log.warning("leader_idle_timeout_unsupported", election=self.name)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._terminated)
        self._conn = conn
        return conn

    def _terminated(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn:
            self._wake.set()

    async def _close_session(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT_S)
        except Exception:
            conn.terminate()

    async def _stop(self) -> None:
        await self._supervisor.aclose()
        if self.leading:
            await self._end_term()
            log.info("leader_released", election=self.name, daemon=self.identity)
        await self._close_session()


async def _close_term(term: contextlib.AsyncExitStack, name: str) -> None:
    try:
        await term.aclose()
    except Exception:
        log.exception("leader_stop_failed", election=name)
