"""A ``nats`` trigger without ``stream``: a core subscription, at most once."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from kit.offer import offer_until_committed
from kit.supervise import describe, raise_if_cancelled
from triggers.base import TriggerError, TriggerEvent
from triggers.nats.events import core_dedupe_key, event_fields, matches
from triggers.nats.runner import NAK_BASE_DELAY_S, NAK_MAX_DELAY_S, Runner, round_trip

log = structlog.get_logger(__name__)

CORE_ATTEMPTS = 5
"""Sink calls for one core message before it is dropped (core NATS cannot redeliver it)."""


class CoreRunner(Runner):
    """A core subscription: at-most-once. A message that arrives while nothing is subscribed is
    lost, and one whose sink calls keep failing is dropped after ``CORE_ATTEMPTS`` (logged)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._sub: Subscription | None = None

    async def prepare(self) -> None:
        self._sub = await self._subscribe()

    async def _subscribe(self) -> Subscription:
        try:
            sub = await self._nc.subscribe(self.spec.subject)
        except nats.errors.Error as exc:
            raise TriggerError(
                f"trigger {self.name}: cannot subscribe to {self.spec.subject}: {describe(exc)}"
            ) from exc
        await round_trip(self._nc)  # subscribed on the server when ``put`` returns
        return sub

    async def stop(self) -> None:
        await super().stop()
        await self._unsubscribe()  # made by ``prepare`` for a session that never ran

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _session(self) -> None:
        if self._sub is None:
            self._sub = await self._subscribe()
        sub = self._sub
        self.error = None
        try:
            async with asyncio.TaskGroup() as handlers:
                self._intake = handlers.create_task(self._read(sub, handlers), name=f"nats-read-{self.name}")
        finally:
            self._intake = None
            await self._unsubscribe()

    async def _read(self, sub: Subscription, handlers: asyncio.TaskGroup) -> None:
        try:
            async for msg in sub.messages:
                raise_if_cancelled()
                await self._wait_for_slot(1)
                self._in_flight += 1
                handlers.create_task(self._handle(msg), name=f"nats-event-{self.name}")
        finally:
            await self._unsubscribe()  # at once: a stopping trigger takes no more messages
        raise TriggerError(f"trigger {self.name}: the subscription to {self.spec.subject} ended")

    async def _handle(self, msg: Msg) -> None:
        try:
            fields = event_fields(msg.subject, msg.data, msg.headers)
            if not matches(fields, self.spec.match):
                return
            event = TriggerEvent(trigger=self.name, dedupe_key=core_dedupe_key(msg.headers), fields=fields)
            try:
                await offer_until_committed(
                    lambda: self.sink(event),
                    failed="nats_event_sink_failed",
                    base=NAK_BASE_DELAY_S,
                    cap=NAK_MAX_DELAY_S,
                    attempts=CORE_ATTEMPTS,
                    trigger=self.name,
                    subject=msg.subject,
                    dedupe_key=event.dedupe_key,
                )
            except Exception as exc:
                log.error(
                    "nats_event_dropped",
                    trigger=self.name,
                    subject=msg.subject,
                    dedupe_key=event.dedupe_key,
                    attempts=CORE_ATTEMPTS,
                    error=describe(exc),
                )
        finally:
            self._release()
