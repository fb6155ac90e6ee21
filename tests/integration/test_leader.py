"""Two daemons on one PostgreSQL database and one NATS server: exactly one (the leader) runs the
trigger sources, the other stands by and takes over when the leader stops or loses its session; both
serve the API and answer submissions, each request once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import nats
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NATS

from daemon.api import make_app
from daemon.runtime import bus
from daemon.runtime.leader import APPLICATION_PREFIX
from daemon.runtime.scheduler import Scheduler
from daemon.store import upsert_datastore
from kit.nats import NatsOptions
from tests.integration.fake_agent import ACCESS, AS_ADMIN, FAST, Harness

RETRY_S = 0.2
SETTINGS = dataclasses.replace(FAST, leader_retry_s=RETRY_S)

PIPELINE = """
kind: Pipeline
name: job
steps:
  - name: only
    command: ["true"]
"""

TRIGGERS = """
kind: Trigger
name: jobs
pipeline: job
on:
  nats: {subject: "SUBJECT"}
---
kind: Trigger
name: ticker
pipeline: job
on:
  cron: "* * * * * *"
  catchup: none
"""


class Daemon:
    """One daemon's scheduler and API on the test's database and the session's NATS server, taking
    part in the leader election as ``sluice daemon`` does."""

    def __init__(self, pool, database_url: str, nats_url: str) -> None:
        self.pool = pool
        self.database_url = database_url
        self.nats_url = nats_url
        self.nc: NATS | None = None
        self.scheduler: Scheduler | None = None
        self.client: TestClient | None = None
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> Daemon:
        self.nc = await bus.connect(NatsOptions(self.nats_url))
        self.scheduler = await Scheduler.start(
            self._stack, pool=self.pool, nc=self.nc, settings=SETTINGS, database_url=self.database_url
        )
        sources = await bus.SourceStore.open(self.nc)
        app = make_app(pool=self.pool, nc=self.nc, sources=sources, access=ACCESS, scheduler=self.scheduler)
        self.client = TestClient(TestServer(app), headers=AS_ADMIN)
        await self.client.start_server()
        return self

    @property
    def leading(self) -> bool:
        """Whether this daemon runs the trigger sources now."""
        return self.scheduler is not None and self.scheduler.triggering is not None

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        await self._stack.aclose()
        self.scheduler = None
        if self.nc is not None:
            await self.nc.drain()
            self.nc = None

    async def apply(self, text: str) -> None:
        assert self.client is not None
        response = await self.client.post(
            "/api/v1/apply", json={"documents": [{"file": "p.yaml", "text": text}]}
        )
        assert response.status == 200, await response.text()

    async def trigger_status(self, name: str) -> dict:
        assert self.client is not None
        response = await self.client.get(f"/api/v1/triggers/{name}")
        assert response.status == 200, await response.text()
        return (await response.json())["status"]


@pytest.fixture
async def daemons(pool, database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[Callable]:
    (tmp_path / "default").mkdir()
    await upsert_datastore(pool, "default", "local", {"path": str(tmp_path / "default")})
    started: list[Daemon] = []

    async def start() -> Daemon:
        daemon = await Daemon(pool, database_url, nats_url).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in reversed(started):
        await daemon.stop()


@contextlib.asynccontextmanager
async def never_both_leading(*pair: Daemon) -> AsyncIterator[None]:
    """Fails the test when, at any moment sampled, both daemons run the trigger sources."""
    seen: list[float] = []

    async def watch() -> None:
        while True:
            if all(daemon.leading for daemon in pair):
                seen.append(time.monotonic())
            await asyncio.sleep(0.005)

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not seen, f"both daemons led at {len(seen)} samples"


async def count(pool, sql: str, *args) -> int:
    return await pool.fetchval(sql, *args)


async def wait_count(pool, expected: int, sql: str, *args, within: float = 5.0) -> None:
    found = 0

    async def reached() -> bool:
        nonlocal found
        found = await count(pool, sql, *args)
        return found >= expected

    await Harness.wait_for(reached, what=f"{expected} rows of {sql}", within=within, last=lambda: found)


RUNS_OF_JOBS = "SELECT count(*) FROM runs WHERE trigger = 'jobs'"
TICKS_SINCE = "SELECT count(*) FROM events WHERE trigger = 'ticker' AND received_at > $1"


async def test_one_daemon_runs_the_triggers_and_the_standby_takes_over(daemons, pool, nats_url: str) -> None:
    subject = f"leader.{uuid.uuid4().hex}.jobs"
    first = await daemons()
    assert first.leading  # the first try takes the lock: no start-up delay for a lone daemon
    second = await daemons()
    assert not second.leading
    assert second.scheduler is not None
    assert second.scheduler.election is not None
    assert first.scheduler is not None
    assert first.scheduler.election is not None
    assert second.scheduler.election.leader == first.scheduler.election.identity

    # Applied through the standby: stored, and the leader's sources follow at once (a NOTIFY), well
    # before its periodic reconcile.
    await second.apply(PIPELINE)
    applied = time.monotonic()
    await second.apply(TRIGGERS.replace("SUBJECT", subject))
    leader_triggering = first.scheduler.triggering
    assert leader_triggering is not None
    await Harness.wait_for(
        lambda: (
            leader_triggering.status("jobs").get("active")
            and leader_triggering.status("ticker").get("active")
        ),
        what="the leader runs the triggers applied on the standby",
        within=3.0,
    )
    assert time.monotonic() - applied < 3.0
    assert (await first.trigger_status("jobs"))["active"] is True
    assert await second.trigger_status("jobs") == {
        "standby": True,
        "leader": first.scheduler.election.identity,
    }

    service = await nats.connect(nats_url, name="service")
    try:
        # A core message without Nats-Msg-Id: one run, not one per daemon.
        await service.publish(subject, b'{"n": 1}')
        await wait_count(pool, 1, RUNS_OF_JOBS)

        # A submission is answered once, by whichever daemon's turn it is in the queue group.
        replies: list[dict] = []
        inbox = service.new_inbox()

        async def on_reply(msg) -> None:
            replies.append(msgspec.json.decode(msg.data))

        await service.subscribe(inbox, cb=on_reply)
        await service.publish("sluice.submit.job", b"{}", reply=inbox)
        await Harness.wait_for(lambda: replies, what="a submit reply", within=5.0)
        await asyncio.sleep(0.3)
        assert len(replies) == 1, replies
        assert replies[0]["created"] is True, replies
        assert await count(pool, RUNS_OF_JOBS) == 1

        # The leader stops: the standby leads within about one retry interval, and no moment has both.
        async with never_both_leading(first, second):
            await first.stop()
            stopped = time.monotonic()
            await Harness.wait_for(lambda: second.leading, what="the standby leads", within=RETRY_S + 2.0)
            took_over_s = time.monotonic() - stopped
        assert took_over_s < RETRY_S + 1.0, took_over_s

        # The new leader runs the same triggers: the next message makes one run, the cron keeps firing.
        await service.publish(subject, b'{"n": 2}')
        await wait_count(pool, 2, RUNS_OF_JOBS)
        after = await pool.fetchval("SELECT now()")
        await wait_count(pool, 1, TICKS_SINCE, after, within=3.0)
        await asyncio.sleep(0.3)
        assert await count(pool, RUNS_OF_JOBS) == 2
        assert (await second.trigger_status("jobs"))["active"] is True
    finally:
        await service.drain()


async def test_a_leader_that_loses_its_session_steps_down(daemons, pool, nats_url: str) -> None:
    subject = f"leader.{uuid.uuid4().hex}.jobs"
    first = await daemons()
    second = await daemons()
    await first.apply(PIPELINE)
    await first.apply(TRIGGERS.replace("SUBJECT", subject))
    assert first.leading
    assert not second.leading

    # The server ends the leader's session (as it would an idle one, or an operator would): the lock
    # goes with it, the old leader stops its sources, and exactly one daemon leads again.
    pid = await pool.fetchval(
        "SELECT pid FROM pg_stat_activity a WHERE application_name LIKE $1 || '%' AND EXISTS "
        "(SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)",
        APPLICATION_PREFIX,
    )
    assert pid is not None
    assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
    await Harness.wait_for(lambda: not first.leading, what="the old leader steps down", within=RETRY_S + 1.0)
    await Harness.wait_for(
        lambda: first.leading or second.leading, what="a daemon leads again", within=RETRY_S + 2.0
    )
    await asyncio.sleep(3 * RETRY_S)
    assert first.leading != second.leading

    service = await nats.connect(nats_url, name="service")
    try:
        await service.publish(subject, b"{}")
        await wait_count(pool, 1, RUNS_OF_JOBS)
        await asyncio.sleep(0.3)
        assert await count(pool, RUNS_OF_JOBS) == 1
    finally:
        await service.drain()
