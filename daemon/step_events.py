"""Step events from agents: the JetStream stream that keeps them while no daemon runs, and the
durable consumer that applies each one.

Each event is applied in one transaction and acknowledged only after it committed; a failure leaves
it unacknowledged (redelivered after a short delay). Events of one attempt are applied in order;
events of different attempts concurrently (bounded by ``WORKERS``). Duplicates and late events
change nothing and are acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from daemon.engine import Engine
from daemon.tasks import TaskSet
from daemon.transitions import apply_finished, apply_started
from runners.protocol import STEPS_STREAM, StepFinished, StepStarted

log = structlog.get_logger(__name__)

SUBJECTS = "sluice.steps.>"
CONSUMER = "sluice-daemon"
DUPLICATE_WINDOW_S = 120.0
ACK_WAIT_S = 30.0
RETRY_DELAY_S = 1.0
WORKERS = 16
WORKER_QUEUE = 4096


async def ensure_stream(js: JetStreamContext) -> None:
    """Creates ``STEPS_STREAM`` (file storage, 2-minute duplicate window), or brings it to that config."""
    config = StreamConfig(
        name=STEPS_STREAM,
        subjects=[SUBJECTS],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        description="Sluice step events from agents",
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)


class StepEvents:
    """The consumer. :meth:`start` binds it; :meth:`run` (a supervised loop) feeds the workers."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._js = engine.nc.jetstream()
        self._sub = None
        self._queues = [asyncio.Queue[Msg](WORKER_QUEUE) for _ in range(WORKERS)]
        self._workers = TaskSet("step-event-workers")

    async def start(self) -> None:
        await ensure_stream(self._js)
        self._sub = await self._js.subscribe(
            SUBJECTS,
            queue=CONSUMER,
            durable=CONSUMER,
            stream=STEPS_STREAM,
            manual_ack=True,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_S,
                max_ack_pending=WORKERS * WORKER_QUEUE,
                deliver_policy=DeliverPolicy.ALL,
            ),
        )
        for index, queue in enumerate(self._queues):
            self._workers.spawn(self._work(queue), name=f"step-events-{index}")

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error as exc:
                log.warning("step_events_unsubscribe_failed", error=repr(exc))
        await self._workers.aclose()

    async def run(self) -> None:
        assert self._sub is not None, "start() first"
        while True:
            try:
                msg = await self._sub.next_msg(timeout=5.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            await self._queues[_attempt_of(msg.subject) % WORKERS].put(msg)

    async def _work(self, queue: asyncio.Queue[Msg]) -> None:
        while True:
            msg = await queue.get()
            await self.handle(msg)

    async def handle(self, msg: Msg) -> None:
        """Applies one event; acks after commit, or leaves it for redelivery when it could not be applied."""
        kind = msg.subject.rsplit(".", 1)[-1]
        try:
            if kind == "started":
                event = StepStarted.decode(msg.data)
                applied = await apply_started(self._engine, event)
            elif kind == "finished":
                event = StepFinished.decode(msg.data)
                applied = await apply_finished(self._engine, event)
            else:
                raise ValueError(f"unknown step event kind {kind!r}")
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            log.warning("step_event_rejected", subject=msg.subject, error=str(exc))
            await _ack(msg, term=True)
            return
        except asyncio.CancelledError:
            raise  # not acked: redelivered to whichever daemon consumes next
        except Exception:
            log.exception("step_event_failed", subject=msg.subject)
            with contextlib.suppress(nats.errors.Error):  # redelivered after ack_wait anyway
                await msg.nak(delay=RETRY_DELAY_S)
            return
        if not applied:
            log.debug("step_event_ignored", subject=msg.subject, attempt=event.attempt_id)
        await _ack(msg)


def _attempt_of(subject: str) -> int:
    try:
        return int(subject.split(".")[2])
    except (IndexError, ValueError):
        return 0


async def _ack(msg: Msg, *, term: bool = False) -> None:
    try:
        await (msg.term() if term else msg.ack())
    except nats.errors.Error as exc:  # redelivered and ignored as a duplicate later
        log.warning("step_event_ack_failed", subject=msg.subject, error=repr(exc))
