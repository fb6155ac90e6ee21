"""One running ``nats`` trigger: its session (subscription and sink calls) under ``kit.supervise``,
the window of sink calls it may run at once, and its stop."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import nats.errors
import structlog
from nats.aio.client import Client as NATS

from kit.backoff import Backoff
from kit.subjects import JS_API
from kit.supervise import describe, supervise
from triggers import specs
from triggers.base import EventSink

if TYPE_CHECKING:
    from triggers.nats.source import NatsSource

log = structlog.get_logger(__name__)

API_TIMEOUT_S = 5.0
NAK_BASE_DELAY_S = 0.5
NAK_MAX_DELAY_S = 30.0
"""A failed sink call's message comes back after a delay from ``NAK_BASE_DELAY_S`` doubling up to this."""
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
STOP_TIMEOUT_S = 10.0


async def round_trip(nc: NATS) -> None:
    """Until the server has processed what this client sent before (a request is answered in order;
    without JetStream the no-responders answer does as well). Not ``nc.flush()``: nats-py 2.16
    leaves the PONG future of a cancelled or timed-out flush in its queue, and the next PONG then
    breaks the connection's read loop."""
    with contextlib.suppress(nats.errors.Error):
        await nc.request(f"{JS_API}.INFO", b"", timeout=API_TIMEOUT_S)


class Runner:
    """One trigger's owned task: a supervised session (subscription and sink calls) that is
    restarted with bounded backoff when it fails, until ``stop``. ``CoreRunner`` and ``StreamRunner``
    say what a session is."""

    def __init__(self, source: NatsSource, name: str, spec: specs.NatsSource, sink: EventSink) -> None:
        self.source = source
        self.name = name
        self.spec = spec
        self.sink = sink
        self.error: str | None = None
        self._nc = source._nc
        self._window = source.max_in_flight
        self._task: asyncio.Task[None] | None = None
        self._intake: asyncio.Task[None] | None = None
        self._closing = False
        self._in_flight = 0
        self._wake = asyncio.Event()

    async def prepare(self) -> None:
        """What must hold when ``put`` returns; raises ``TriggerError``."""

    async def _session(self) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        return {
            "subject": self.spec.subject,
            "stream": self.spec.stream,
            "consumer_lag": None,
            "in_flight": self._in_flight,
            "error": self.error,
        }

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"nats-trigger-{self.name}")
        self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.error = describe(task.exception())
            log.error("nats_trigger_died", trigger=self.name, error=self.error)

    async def _supervise(self) -> None:
        with structlog.contextvars.bound_contextvars(trigger=self.name, stream=self.spec.stream):
            log.info("nats_trigger_started", subject=self.spec.subject)
            await supervise(
                self._session,
                name=f"nats-session-{self.name}",
                crashed="nats_trigger_failed",
                delays=Backoff(RETRY_MIN_S, RETRY_MAX_S),
                fresh_after_s=RETRY_MAX_S,
                on_crash=self._failed,
                traceback=False,  # mostly the server's refusals and losses, which say it all
                stopping=lambda: self._closing,
            )

    def _failed(self, exc: Exception) -> None:
        self.error = describe(exc)

    async def stop(self) -> None:
        """Stop taking messages, let running sink calls finish (``stop_grace``), cancel the rest."""
        self._closing = True
        if self._task is None:
            return
        try:
            if self._intake is not None:
                self._intake.cancel()
                await asyncio.wait({self._intake}, timeout=STOP_TIMEOUT_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.source.stop_grace):
                    while self._in_flight:
                        self._wake.clear()
                        await self._wake.wait()
        finally:
            self._task.cancel()  # also when ``stop`` itself is cancelled: no runner outlives it
        done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)
        if not done:
            log.error("nats_trigger_stop_timeout", trigger=self.name, timeout_s=STOP_TIMEOUT_S)
        log.info("nats_trigger_stopped", trigger=self.name, stream=self.spec.stream)

    async def _wait_for_slot(self, free: int) -> None:
        """Until at least ``free`` of the window's sink calls are free."""
        while self._window - self._in_flight < free:
            self._wake.clear()
            await self._wake.wait()

    def _release(self) -> None:
        self._in_flight -= 1
        self._wake.set()
