"""The ``Source`` of ``nats`` triggers: puts, removes and forgets triggers, one ``Runner`` each, over
one NATS client that the caller owns."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS

from kit.streams import trigger_durable
from kit.subjects import subject_problem
from kit.supervise import describe
from triggers import specs
from triggers.base import EventSink, SaveState, Source, TriggerConfig, TriggerError
from triggers.nats.core import CoreRunner
from triggers.nats.runner import API_TIMEOUT_S, Runner
from triggers.nats.stream import StreamRunner

log = structlog.get_logger(__name__)

MAX_IN_FLIGHT = 64
"""Sink calls running at once per trigger (a JetStream pull asks for no more than are free)."""
MAX_ACK_PENDING = 1000
ACK_WAIT_S = 5.0
LAG_MAX_AGE_S = 3.0
"""``status`` asks for a fresh consumer lag when the one it has is older than this."""
STOP_GRACE_S = 5.0
"""How long ``remove`` and teardown let running sink calls finish before cancelling them."""


class NatsSource(Source):
    """Serves every ``nats`` trigger over one connected NATS client, which the caller owns."""

    kind = "nats"

    def __init__(
        self,
        nc: NATS,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        ack_wait: float = ACK_WAIT_S,
        max_ack_pending: int = MAX_ACK_PENDING,
        stop_grace: float = STOP_GRACE_S,
        lag_max_age: float = LAG_MAX_AGE_S,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._nc = nc
        self.js = nc.jetstream(timeout=API_TIMEOUT_S)
        self.max_in_flight = max_in_flight
        self.ack_wait = ack_wait
        self.max_ack_pending = max(max_ack_pending, max_in_flight)
        self.stop_grace = stop_grace
        self.lag_max_age = lag_max_age
        self._sink: EventSink | None = None
        self._runners: dict[str, Runner] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def start(self, stack: contextlib.AsyncExitStack, sink: EventSink, save_state: SaveState) -> None:
        """Nothing to acquire but the sink (the client is the caller's); teardown stops every
        trigger: running sink calls get ``stop_grace`` to finish, unacked messages are nak'ed."""
        self._sink = sink
        stack.push_async_callback(self._close)

    async def _close(self) -> None:
        runners, self._runners = list(self._runners.values()), {}
        async with asyncio.TaskGroup() as group:
            for runner in runners:
                group.create_task(runner.stop(), name=f"nats-trigger-stop-{runner.name}")
        self._sink = None

    async def put(self, trigger: TriggerConfig) -> None:
        """Subscribe (core) or bind the durable consumer (JetStream) for ``trigger``.

        When it returns, a core trigger is subscribed on the server. A changed spec restarts the
        trigger: a changed ``match`` keeps the consumer and its position, a changed subject updates
        the consumer's filter in place (its position is kept: messages of the new subject stored
        before it are not replayed), a changed or dropped ``stream`` deletes the consumer on the
        old stream. Raises ``TriggerError`` when the trigger cannot be watched now (a stream that
        does not exist, JetStream not answering, an invalid subject); except for an invalid spec the
        source keeps trying with backoff, ``status`` shows the error, and the trigger starts once
        the stream is there.
        """
        spec = trigger.on
        if not isinstance(spec, specs.NatsSource):
            raise TriggerError(f"trigger {trigger.name}: not a nats source ({type(spec).__name__})")
        if self._sink is None:
            raise RuntimeError("NatsSource.put before start (or after teardown)")
        async with self._locks[trigger.name]:
            current = self._runners.get(trigger.name)
            if current is not None and current.spec == spec:
                if not current.started:  # a spec no runner can watch
                    raise TriggerError(current.error or f"trigger {trigger.name} cannot be watched")
                return
            if current is not None:
                del self._runners[trigger.name]
                await current.stop()
                if current.spec.stream is not None and current.spec.stream != spec.stream:
                    await self._delete_quietly(trigger.name, current.spec.stream)
            runner: Runner
            if spec.stream is None:
                runner = CoreRunner(self, trigger.name, spec, self._sink)
            else:
                runner = StreamRunner(self, trigger.name, spec, self._sink)
            self._runners[trigger.name] = runner
            if problem := subject_problem(spec.subject):
                runner.error = f"trigger {trigger.name}: {problem}"
                raise TriggerError(runner.error)
            try:
                await runner.prepare()
            except TriggerError as exc:
                runner.error = str(exc)
                runner.start()
                raise
            except BaseException:
                del self._runners[trigger.name]
                raise
            runner.start()

    async def remove(self, name: str) -> None:
        """Stop watching ``name`` (paused or deleted). A JetStream trigger's durable consumer stays,
        so that a resume continues where it stopped, messages published meanwhile included; a
        deleted trigger's consumer goes with ``delete_consumer``. Running sink calls get
        ``stop_grace`` to finish; messages not acked by then are nak'ed for prompt redelivery."""
        async with self._locks[name]:
            runner = self._runners.pop(name, None)
            if runner is not None:
                await runner.stop()

    async def forget(self, name: str, on: specs.EventSource) -> None:
        """A deleted trigger: its durable consumer goes too (a paused one keeps it)."""
        if isinstance(on, specs.NatsSource) and on.stream:
            await self.delete_consumer(name, on.stream)
        else:
            await self.remove(name)

    async def delete_consumer(self, name: str, stream: str) -> None:
        """Forget a deleted trigger: stop it, and delete its durable consumer on ``stream`` (its
        position and unacked messages); a consumer that is not there is fine. Raises
        ``TriggerError`` when JetStream refuses or does not answer."""
        await self.remove(name)
        try:
            await self.js.delete_consumer(stream, trigger_durable(name))
        except nats.js.errors.NotFoundError:
            return
        except (nats.errors.Error, ValueError) as exc:
            raise TriggerError(
                f"trigger {name}: could not delete consumer {trigger_durable(name)} on stream {stream}: "
                f"{describe(exc)}"
            ) from exc
        log.info("nats_consumer_deleted", trigger=name, stream=stream, consumer=trigger_durable(name))

    async def _delete_quietly(self, name: str, stream: str) -> None:
        try:
            await self.js.delete_consumer(stream, trigger_durable(name))
        except nats.js.errors.NotFoundError:
            pass
        except (nats.errors.Error, ValueError) as exc:
            log.warning("nats_consumer_delete_failed", trigger=name, stream=stream, error=describe(exc))

    def pending(self) -> dict[str, int]:
        """Each JetStream trigger's messages not yet delivered to it, as of its last delivery (or
        consumer info); costs no request, unlike :meth:`status`."""
        return {
            name: runner.pending
            for name, runner in self._runners.items()
            if isinstance(runner, StreamRunner) and runner.pending is not None
        }

    def status(self, name: str) -> Mapping[str, Any]:
        """``subject``, ``stream``, ``consumer_lag`` (JetStream: messages of the filter not yet
        delivered, at most a few seconds old; None for core or before it is known),
        ``ack_pending`` (delivered, not yet acked), ``in_flight`` (sink calls running) and
        ``error`` (why the trigger is not watching now, or None)."""
        runner = self._runners.get(name)
        return {} if runner is None else runner.status()
