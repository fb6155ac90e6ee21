"""Step events from agents: the JetStream stream that keeps them while no daemon runs, and the
durable consumer that applies them.

An event's agent is the one its subject names (only that agent may publish there); it counts only for
an attempt assigned to that agent. Anything else is dropped, acknowledged, and logged once per agent
per minute (``step_event_refused``).

The consumer applies events in batches: whatever has arrived while the previous batch was being
applied (up to ``MAX_BATCH``), in one transaction, in arrival order (so events of one attempt apply
in order). Under load a batch costs a handful of round trips for hundreds of events; when idle a
batch is one event and nothing waits. Each message is acknowledged only after its batch committed.
When a batch fails, its events are applied one by one, so that one event that cannot be applied
(nak'd: redelivered after a short delay) does not hold back the others. Duplicates and late events
change nothing and are acknowledged; an undecodable event is terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from daemon.dispatch.cancel import Cancels
from daemon.dispatch.transitions import Reported, Transitions
from daemon.errors import Unavailable
from daemon.runtime.refusals import Refusals
from daemon.store import attempts as attempt_store
from daemon.store.db import DATABASE_ERRORS
from kit.nats import BusError
from kit.streams import (
    STEPS_ACK_WAIT_S,
    STEPS_CONSUMER,
    STEPS_MAX_ACK_PENDING,
    ensure_steps_stream,
    steps_consumer,
)
from kit.subjects import STEP_EVENTS, STEPS_STREAM
from kit.tasks import TaskSet
from runners.protocol import DAEMON_INBOX, StepFinished, StepStarted, step_event_origin

log = structlog.get_logger(__name__)

DELIVER_SUBJECT = f"{DAEMON_INBOX}.step-events"
"""Where the consumer pushes events, to the daemons' queue group: one subject for all daemons."""
RETRY_DELAY_S = 1.0
MAX_BATCH = 256
MAX_DELIVERIES = 5
"""An event that failed this many times is given up (terminated, logged): it can never apply (a
value PostgreSQL refuses), and must not hold back the others for ever."""


class StepEvents:
    """The consumer. :meth:`start` binds it; :meth:`run` (a supervised loop) applies what arrives."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        nc: NATS,
        transitions: Transitions,
        cancels: Cancels,
        replicas: int | None = None,
    ) -> None:
        self._pool = pool
        self._replicas = replicas
        self._nc = nc
        self._js = nc.jetstream()
        self._transitions = transitions
        self._cancels = cancels
        self._sub = None
        # Bounded by the consumer's max_ack_pending: messages stay unacked until applied.
        self._inbox: asyncio.Queue[Msg] = asyncio.Queue()
        self._followups = TaskSet("step-event-followups")
        self._refusals = Refusals("step_event_refused")
        self._working: tuple[list[Msg], float] | None = None  # the batch being applied, since when

    async def start(self) -> None:
        """Makes the stream (or brings it to today's config and ``replicas``, None: those it has; the
        consumer has the stream's) and the consumer, and binds.

        Raises ``Unavailable`` when JetStream refuses them (too few servers for the replicas).
        """
        try:
            await ensure_steps_stream(self._js, self._replicas)
        except BusError as exc:
            raise Unavailable(str(exc)) from exc
        await self._update_consumer()
        self._sub = await self._js.subscribe(
            STEP_EVENTS,
            queue=STEPS_CONSUMER,
            durable=STEPS_CONSUMER,
            stream=STEPS_STREAM,
            cb=self._receive,
            manual_ack=True,
            config=steps_consumer(DELIVER_SUBJECT),
        )

    async def _update_consumer(self) -> None:
        """A consumer made by an earlier release keeps its position and takes today's settings
        (subscribing to an existing durable would use it as it is): the ack wait, the pending bound,
        and the daemons' one deliver subject, under their own inbox, where no service may listen."""
        try:
            info = await self._js.consumer_info(STEPS_STREAM, STEPS_CONSUMER)
        except nats.js.errors.NotFoundError:
            return
        config = info.config
        current = (config.ack_wait, config.max_ack_pending, config.deliver_subject)
        if current != (STEPS_ACK_WAIT_S, STEPS_MAX_ACK_PENDING, DELIVER_SUBJECT):
            config.ack_wait, config.max_ack_pending = STEPS_ACK_WAIT_S, STEPS_MAX_ACK_PENDING
            config.deliver_subject = DELIVER_SUBJECT
            await self._js.add_consumer(STEPS_STREAM, config=config)
            log.info(
                "step_events_consumer_updated",
                ack_wait=STEPS_ACK_WAIT_S,
                deliver_subject=config.deliver_subject,
            )

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error as exc:
                log.warning("step_events_unsubscribe_failed", error=repr(exc))
        await self._followups.aclose()

    async def _receive(self, msg: Msg) -> None:
        self._inbox.put_nowait(msg)

    async def run(self) -> None:
        assert self._sub is not None, "start() first"
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._keep_working(), name="step-events-in-progress")
            await self._consume()

    async def _keep_working(self) -> None:
        """Tells JetStream that the events of a batch applied for longer than a third of the ack wait
        are being worked on: a slow commit must not make them come back."""
        interval = STEPS_ACK_WAIT_S / 3
        while True:
            await asyncio.sleep(interval)
            if self._working is not None and time.monotonic() - self._working[1] >= interval:
                for msg in self._working[0]:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()

    async def _consume(self) -> None:
        while True:
            batch = [await self._inbox.get()]
            while len(batch) < MAX_BATCH and not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            await self.handle(batch)

    async def handle(self, messages: list[Msg]) -> None:
        """Applies a batch of messages: acks each after its transaction committed, terminates the
        undecodable, and leaves the ones that could not be applied for redelivery."""
        decoded: list[tuple[Msg, Reported]] = []
        for msg in messages:
            try:
                decoded.append((msg, _decode(msg)))
            except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
                self._refusals.refuse(_sender(msg.subject), str(exc), subject=msg.subject)
                await _ack(msg, term=True)
        if not decoded:
            return
        self._working = ([msg for msg, _ in decoded], time.monotonic())
        try:
            await self._apply(decoded)
        except asyncio.CancelledError:
            raise  # not acked: redelivered to whichever daemon consumes next
        except Exception:
            if len(decoded) == 1:
                msg = decoded[0][0]
                if _deliveries(msg) >= MAX_DELIVERIES:
                    log.exception("step_event_given_up", subject=msg.subject, deliveries=_deliveries(msg))
                    await _ack(msg, term=True)
                    return
                log.exception("step_event_failed", subject=msg.subject)
                with contextlib.suppress(nats.errors.Error):  # redelivered after ack_wait anyway
                    await msg.nak(delay=RETRY_DELAY_S)
                return
            log.warning("step_event_batch_failed", events=len(decoded), exc_info=True)
            for msg, _ in decoded:
                await self.handle([msg])
        finally:
            self._working = None

    async def _apply(self, decoded: list[tuple[Msg, Reported]]) -> None:
        applied = await self._transitions.apply_events([item for _, item in decoded])
        unchanged = [item for (_, item), changed in zip(decoded, applied.changed, strict=True) if not changed]
        for msg, _ in decoded:
            await _ack(msg)
        if applied.cancels:
            self._followups.spawn(
                self._cancels.send(applied.cancels, "run cancelled"), name="cancel-late-starts"
            )
        if unchanged:
            try:
                await self._refuse_foreign(unchanged)
            except DATABASE_ERRORS as exc:  # only a diagnosis: the batch is applied and acked
                log.warning("step_event_check_failed", error=str(exc) or type(exc).__name__)

    async def _refuse_foreign(self, unchanged: list[Reported]) -> None:
        """Of the events that changed nothing (mostly repeats and late events), logs those from an
        agent the attempt was never assigned to."""
        holders = await attempt_store.attempt_agents(
            self._pool, [item.event.attempt_id for item in unchanged]
        )
        for item in unchanged:
            holder = holders.get(item.event.attempt_id)
            if holder != item.agent_id:
                self._refusals.refuse(
                    item.agent_id,
                    f"attempt {item.event.attempt_id} is assigned to {holder or 'no agent'}",
                    attempt=item.event.attempt_id,
                    kind=item.event.kind,
                )
            else:
                log.debug("step_event_ignored", agent=item.agent_id, attempt=item.event.attempt_id)


def _deliveries(msg: Msg) -> int:
    """How many times JetStream delivered ``msg`` (1 when it cannot tell)."""
    try:
        return msg.metadata.num_delivered or 1
    except (AttributeError, ValueError, IndexError):
        return 1


def _sender(subject: str) -> str:
    """Who published on ``subject`` (``sluice.steps.<agent>.…``), for a refusal's log line."""
    parts = subject.split(".")
    return parts[2] if len(parts) > 2 else subject


def _decode(msg: Msg) -> Reported:
    """The event and the agent its subject names. Raises ``ValueError`` (or msgspec's errors) for a
    subject or payload that is not a step event, or a payload about another attempt."""
    agent_id, attempt_id, kind = step_event_origin(msg.subject)
    event = (StepStarted if kind == "started" else StepFinished).decode(msg.data)
    if event.attempt_id != attempt_id:
        raise ValueError(f"the event is about attempt {event.attempt_id}, its subject about {attempt_id}")
    return Reported(agent_id, event)


async def _ack(msg: Msg, *, term: bool = False) -> None:
    try:
        await (msg.term() if term else msg.ack())
    except nats.errors.Error as exc:  # redelivered and ignored as a duplicate later
        log.warning("step_event_ack_failed", subject=msg.subject, error=repr(exc))
