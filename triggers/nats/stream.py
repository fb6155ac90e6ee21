"""A ``nats`` trigger with ``stream``: a JetStream durable pull consumer, at least once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from kit.backoff import backoff_s
from kit.streams import trigger_consumer, trigger_durable
from kit.subjects import JS_API
from kit.supervise import describe, raise_if_cancelled
from triggers.base import TriggerError, TriggerEvent
from triggers.nats.events import event_fields, matches, stream_dedupe_key
from triggers.nats.pull import Pull
from triggers.nats.runner import NAK_BASE_DELAY_S, NAK_MAX_DELAY_S, Runner

log = structlog.get_logger(__name__)

LAG_TIMEOUT_S = 1.0
LAG_REFRESH_S = 30.0


class StreamRunner(Runner):
    """A JetStream durable pull consumer: at-least-once delivery, acked after the sink commits."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        assert self.spec.stream is not None
        self.stream: str = self.spec.stream
        self.consumer = trigger_durable(self.name)
        self._next_subject = f"{JS_API}.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"
        self._ensured = False
        self._lag: int | None = None
        self._ack_pending: int | None = None
        self._info_at = 0.0
        self._lag_wanted = asyncio.Event()
        self._working: dict[int, tuple[Msg, float]] = {}

    @property
    def pending(self) -> int | None:
        """The consumer's messages not yet delivered, as last seen (None before it is known)."""
        return self._lag

    def status(self) -> dict[str, Any]:
        if time.monotonic() - self._info_at > self.source.lag_max_age:
            self._lag_wanted.set()
        return super().status() | {"consumer_lag": self._lag, "ack_pending": self._ack_pending}

    async def prepare(self) -> None:
        await self._ensure()
        self._ensured = True

    async def _ensure(self) -> None:
        """Create the durable consumer, or update it to the spec; never the stream."""
        config = trigger_consumer(
            self.name,
            self.spec.subject,
            ack_wait=self.source.ack_wait,
            max_ack_pending=self.source.max_ack_pending,
        )
        try:
            info = await self.source.js.add_consumer(self.stream, config=config)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == 10059:
                raise TriggerError(
                    f"trigger {self.name}: JetStream stream {self.stream} does not exist "
                    "(Sluice never creates a trigger's stream; create it, or drop `stream` for core NATS)"
                ) from exc
            raise TriggerError(f"trigger {self.name}: stream {self.stream}: {describe(exc)}") from exc
        except nats.js.errors.APIError as exc:
            raise TriggerError(
                f"trigger {self.name}: JetStream refused consumer {self.consumer} on stream {self.stream}: "
                f"{exc.description or describe(exc)}"
            ) from exc
        except (nats.errors.Error, TimeoutError, ValueError) as exc:
            raise TriggerError(
                f"trigger {self.name}: cannot bind consumer {self.consumer} on stream {self.stream}: "
                f"{describe(exc)}"
            ) from exc
        self._set_info(info.num_pending, info.num_ack_pending)

    def _set_info(self, pending: int, ack_pending: int) -> None:
        self._lag, self._ack_pending, self._info_at = pending, ack_pending, time.monotonic()

    async def _session(self) -> None:
        if not self._ensured:
            await self._ensure()
            raise_if_cancelled()
        self._ensured = False  # a session that fails binds again before the next one
        self.error = None
        sub: Subscription | None = None
        try:
            async with asyncio.TaskGroup() as handlers:
                pull = Pull(self, self._nc.new_inbox(), handlers)
                sub = await self._nc.subscribe(f"{pull.inbox}.*", cb=pull.on_message)
                self._intake = handlers.create_task(pull.run(sub), name=f"nats-pull-{self.name}")
                handlers.create_task(self._refresh_lag(), name=f"nats-lag-{self.name}")
                handlers.create_task(self._keep_working(), name=f"nats-progress-{self.name}")
        finally:
            if sub is not None:  # ``pull.run`` unsubscribes; this is for a session cut short
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        try:
            meta = msg.metadata
        except Exception as exc:
            self._release()
            log.warning("nats_message_unreadable", trigger=self.name, reply=msg.reply, error=str(exc))
            return
        seq = meta.sequence.stream
        self._lag = meta.num_pending  # as of this delivery; consumer info keeps it fresh when idle
        self._working[id(msg)] = (msg, time.monotonic())
        try:
            fields = event_fields(msg.subject, msg.data, msg.headers)
            if matches(fields, self.spec.match):
                key = stream_dedupe_key(msg.headers, self.stream, seq)
                await self.sink(TriggerEvent(trigger=self.name, dedupe_key=key, fields=fields))
            await self._settle(msg.ack, seq)
        except asyncio.CancelledError:
            await asyncio.shield(self._settle(msg.nak, seq))
            raise
        except Exception as exc:
            delay = backoff_s(meta.num_delivered, base=NAK_BASE_DELAY_S, cap=NAK_MAX_DELAY_S)
            log.warning(
                "nats_event_sink_failed",
                trigger=self.name,
                stream=self.stream,
                seq=seq,
                delivered=meta.num_delivered,
                nak_delay=delay,
                error=describe(exc),
            )
            await self._settle(lambda: msg.nak(delay=delay), seq)
        finally:
            self._working.pop(id(msg), None)
            self._release()

    async def _settle(self, reply: Any, seq: int) -> None:
        """Ack or nak; a lost one only means a redelivery after ``ack_wait``."""
        try:
            await reply()
        except nats.errors.Error as exc:
            log.warning("nats_ack_failed", trigger=self.name, stream=self.stream, seq=seq, error=str(exc))

    async def _keep_working(self) -> None:
        """Tell JetStream that sink calls running longer than a third of ``ack_wait`` are still
        being worked on, so that a slow commit is not redelivered while it runs."""
        interval = self.source.ack_wait / 3
        while True:
            raise_if_cancelled()
            await asyncio.sleep(interval)
            since = time.monotonic() - interval
            for msg, started in list(self._working.values()):
                if started < since:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()

    async def _refresh_lag(self) -> None:
        """Consumer info every ``LAG_REFRESH_S``, or sooner (at most once a second) when ``status``
        found the last one older than ``lag_max_age``."""
        while True:
            try:
                info = await self.source.js.consumer_info(self.stream, self.consumer, timeout=LAG_TIMEOUT_S)
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("nats_lag_unavailable", trigger=self.name, stream=self.stream, error=describe(exc))
            else:
                self._set_info(info.num_pending, info.num_ack_pending)
            raise_if_cancelled()
            self._lag_wanted.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LAG_REFRESH_S):
                    await self._lag_wanted.wait()
            await asyncio.sleep(min(1.0, self.source.lag_max_age))
