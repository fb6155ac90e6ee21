"""Step events to JetStream, each published until the stream acknowledges it.

Events of one attempt go out in the order they were put (started before finished); attempts do not
wait for each other. Each event goes out on the agent's own subject with ``Nats-Msg-Id`` =
``step_event_id``, so a retry after a lost acknowledgement is stored once. Retries back off
exponentially up to ``MAX_BACKOFF_S`` (``kit.offer``) and go on until acknowledged or until ``close``
gives up on what is still pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from nats.js import JetStreamContext

from kit.nats import NatsErrors
from kit.offer import offer_until_committed
from kit.subjects import STEPS_STREAM
from runners.protocol import StepFinished, StepStarted, step_event_id, step_event_subject

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_S = 2.0
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
"""A stream whose leader died answers again once its servers elected another (4 to 9 s in NATS's
raft): a short cap gets the events there within a second of that, rather than 5 s later."""

StepEvent = StepStarted | StepFinished


class Outbox:
    def __init__(self, js: JetStreamContext, agent: str) -> None:
        self._js = js
        self._agent = agent
        self._tails: dict[int, asyncio.Task[None]] = {}  # attempt id -> its last event's task
        self._tasks: set[asyncio.Task[None]] = set()

    def put(self, event: StepEvent, on_acked: Callable[[], None] | None = None) -> None:
        """Queue ``event`` behind the attempt's earlier ones; ``on_acked`` runs once it is stored."""
        previous = self._tails.get(event.attempt_id)
        name = f"event-{event.attempt_id}.{event.kind}"
        task = asyncio.create_task(self._send(event, previous, on_acked), name=name)
        self._tails[event.attempt_id] = task
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def close(self, timeout_s: float) -> None:
        """Waits up to ``timeout_s`` for every pending event to be acknowledged, then gives up on the
        rest (logged: the daemon will find those attempts lost)."""
        tasks = set(self._tasks)
        if not tasks:
            return
        _, unsent = await asyncio.wait(tasks, timeout=timeout_s)
        for task in unsent:
            task.cancel()
        if unsent:
            await asyncio.wait(unsent)
            log.error("step_events_unsent", events=sorted(task.get_name() for task in unsent))

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        for attempt_id, tail in list(self._tails.items()):
            if tail is task:
                del self._tails[attempt_id]

    async def _send(
        self, event: StepEvent, previous: asyncio.Task[None] | None, on_acked: Callable[[], None] | None
    ) -> None:
        if previous is not None:
            await asyncio.wait({previous})  # its outcome is its own; only the order matters here
        subject = step_event_subject(self._agent, event.attempt_id, event.kind)
        event_id = step_event_id(self._agent, event.attempt_id, event.kind)
        payload = event.encode()
        await offer_until_committed(
            lambda: self._js.publish(
                subject,
                payload,
                timeout=PUBLISH_TIMEOUT_S,
                stream=STEPS_STREAM,
                headers={"Nats-Msg-Id": event_id},
            ),
            failed="step_event_retry",
            base=FIRST_BACKOFF_S,
            cap=MAX_BACKOFF_S,
            errors=NatsErrors,
            attempt=event.attempt_id,
            event_id=event_id,
        )
        log.debug("step_event_stored", attempt=event.attempt_id, event_id=event_id)
        if on_acked is not None:
            on_acked()
