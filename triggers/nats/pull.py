"""The pull requests of one JetStream session of a ``nats`` trigger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from kit.supervise import raise_if_cancelled
from triggers.base import TriggerError
from triggers.nats.runner import NAK_BASE_DELAY_S, round_trip

if TYPE_CHECKING:
    from triggers.nats.stream import StreamRunner

log = structlog.get_logger(__name__)

PULL_EXPIRES_S = 30.0
PULL_HEARTBEAT_S = 1.0
"""The server's sign of life on an idle request. A request lives only on the consumer's leader: when
that server dies (or the client reconnects elsewhere) it is gone without a word, and this bounds how
long the trigger waits before asking the new leader (measured on a three-server cluster: 13 s with 5 s)."""
PULL_SILENCE_S = 2 * PULL_HEARTBEAT_S + 1.0
"""No message and no heartbeat for this long: the pull request was lost (a reconnect); ask again."""
ENDED = ("404", "408", "409 Leadership Change")
"""Statuses that end a request and ask for another: no messages, expired, and the consumer's new
leader (after a failover in a cluster) forgetting the requests its predecessor held."""
LEADERLESS = "503"
"""No server answers for the consumer: in a cluster, its servers are electing a new leader (4 to 9 s
after the old one died), or it is gone. Asked again every ``LEADERLESS_RETRY_S`` (binding the
consumer again goes through JetStream's meta leader, which may be electing too, and its API calls
time out meanwhile: it cost 3 s more), and taken as gone after ``LEADERLESS_GRACE_S``."""
LEADERLESS_RETRY_S = 0.5
LEADERLESS_GRACE_S = 15.0


class Pull:
    """The pull requests of one JetStream session: one request at a time asks for what the window
    has free. Deliveries go to handler tasks straight from the subscription's callback, so that a
    burst is handed out in one pass of the event loop and its acks leave together.

    A request ends when it got its batch, or with a 404/408 status (it expired) or 409 Leadership
    Change; silence beyond the idle heartbeat means it was lost (a reconnect, a dead leader); a 503
    (no consumer leader) asks again shortly, for a while; another status (409 consumer deleted), or
    503s past that while, ends the session, which the runner restarts after binding the consumer
    again."""

    def __init__(self, runner: StreamRunner, inbox: str, handlers: asyncio.TaskGroup) -> None:
        self.runner = runner
        self.inbox = inbox
        self.handlers = handlers
        self.reply: str | None = None
        self.wanted = self.received = self.number = 0
        self.heard = time.monotonic()
        self.failure: str | None = None
        self.accepting = True
        self.leaderless_since: float | None = None
        self.next_request_at = 0.0

    async def on_message(self, msg: Msg) -> None:
        runner = self.runner
        if msg.reply:  # a message of the stream
            if not self.accepting:  # delayed: no ping-pong with the request being ended
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak(delay=NAK_BASE_DELAY_S)
                return
            self.heard = time.monotonic()
            self.received += 1
            if self.reply is not None and self.received >= self.wanted:
                self.reply = None
                runner._wake.set()
            try:
                self.handlers.create_task(runner._handle(msg), name=f"nats-event-{runner.name}")
            except RuntimeError:  # the session is shutting down
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak()
                return
            runner._in_flight += 1
            return
        if msg.subject != self.reply:
            return  # the end of an earlier request
        self.heard = time.monotonic()
        status = (msg.headers or {}).get("Status")
        if status != LEADERLESS:
            self.leaderless_since = None  # the consumer has a leader
        if status == "100":
            return
        self.reply = None
        description = (msg.headers or {}).get("Description", "").strip()
        now = time.monotonic()
        if status == LEADERLESS:
            self.leaderless_since = self.leaderless_since or now
            if now - self.leaderless_since < LEADERLESS_GRACE_S:
                self.next_request_at = now + LEADERLESS_RETRY_S
                runner._wake.set()
                return
        if status not in ENDED and f"{status} {description}" not in ENDED:
            self.failure = (
                f"trigger {runner.name}: JetStream stopped delivering from stream {runner.stream} "
                f"(consumer {runner.consumer}): {status} {description}".rstrip()
            )
        runner._wake.set()

    async def run(self, sub: Subscription) -> None:
        runner = self.runner
        threshold = max(1, runner._window // 4)
        try:
            while True:
                raise_if_cancelled()
                if self.failure:
                    raise TriggerError(self.failure)
                timeout: float | None = None
                if self.reply is None:
                    free = runner._window - runner._in_flight
                    if free >= threshold:
                        pause = self.next_request_at - time.monotonic()
                        if pause <= 0:
                            await self._request(free)
                            continue
                        timeout = pause
                else:
                    timeout = self.heard + PULL_SILENCE_S - time.monotonic()
                    if timeout <= 0:
                        log.info("nats_pull_silent", trigger=runner.name, stream=runner.stream)
                        self.reply = None
                        continue
                runner._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await runner._wake.wait()
        finally:
            await asyncio.shield(self._give_back(sub))

    async def _request(self, batch: int) -> None:
        self.number += 1
        self.reply, self.wanted, self.received = f"{self.inbox}.{self.number}", batch, 0
        self.heard = time.monotonic()
        request = {
            "batch": batch,
            "expires": int(PULL_EXPIRES_S * 1e9),
            "idle_heartbeat": int(PULL_HEARTBEAT_S * 1e9),
        }
        await self.runner._nc.publish(
            self.runner._next_subject, json.dumps(request).encode(), reply=self.reply
        )

    async def _give_back(self, sub: Subscription) -> None:
        """End the outstanding request: what it delivered until the server answers a round trip is
        nak'ed (a resume gets it at once), then unsubscribe; once this returns the server has the
        unsubscribe. Only a message sent in the one round trip between the two is dropped here and
        comes back after ``ack_wait``."""
        self.accepting = False
        await round_trip(self.runner._nc)
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
        await round_trip(self.runner._nc)
