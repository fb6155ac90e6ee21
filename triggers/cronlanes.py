"""Delivering the cron source's due fires: each trigger has a *lane*, a queue of its fires that one
task drains in order (await the sink, then save ``{"last_fire": ISO UTC}``).

Lanes run side by side, at most ``concurrency`` sink calls at once, so a slow commit delays only its
own trigger. A fire whose sink call fails is offered again with capped exponential backoff until it
is committed or its trigger is removed (``kit.offer``); the watermark moves only after a commit. Each
sink call is bounded by ``sink_timeout_s``, enforced by one periodic sweep (:meth:`Lanes.sweep`, run
by the scheduler) rather than a timer per call.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

import structlog

from kit.offer import offer_until_committed
from kit.tasks import TaskSet
from triggers.base import EventResult, EventSink, SaveState, TriggerEvent

log = structlog.get_logger(__name__)

SAVE_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
RETRY_BASE_S = 0.1
RETRY_CAP_S = 30.0


class Lane:
    """The fires of one trigger awaiting delivery, oldest first, and the one task that delivers them."""

    __slots__ = ("closed", "name", "overdue", "pending", "previous", "task")

    def __init__(self, name: str, previous: asyncio.Task | None) -> None:
        self.name = name
        self.pending: deque[tuple[datetime, TriggerEvent]] = deque()
        self.task: asyncio.Task | None = None
        self.previous = previous  # the lane of an earlier put of this name, maybe still in a sink call
        self.closed = False
        self.overdue = False  # its sink call ran past the sink timeout and was cancelled for that


class Lanes:
    """Every trigger's lane; ``committed(name, fire)`` is told of each fire the sink committed."""

    def __init__(
        self, *, concurrency: int, sink_timeout_s: float, committed: Callable[[str, datetime], None]
    ) -> None:
        self.sink: EventSink | None = None  # both set when the source starts
        self.save_state: SaveState | None = None
        self._sink_timeout_s = sink_timeout_s
        self._committed = committed
        self._lanes: dict[str, Lane] = {}
        self._closing: dict[str, asyncio.Task] = {}  # removed triggers' lanes still in a sink call
        self._limit = asyncio.Semaphore(concurrency)
        self.tasks = TaskSet("cron")
        """The lanes' deliveries, cancelled and awaited when the source stops."""
        self._in_sink: dict[Lane, float] = {}  # lanes awaiting the sink -> monotonic deadline

    def __getitem__(self, name: str) -> Lane:
        return self._lanes[name]

    @property
    def in_sink(self) -> bool:
        """Whether a sink call is in flight (the scheduler then sweeps each ``SWEEP_S``)."""
        return bool(self._in_sink)

    def open(self, name: str) -> Lane:
        """A new lane for trigger ``name``; it delivers only once the removed lane of that name is done."""
        self._lanes[name] = lane = Lane(name, self._closing.pop(name, None))
        return lane

    def close(self, name: str) -> None:
        """Drop ``name``'s lane: its pending fires are forgotten, a sink call in flight is let finish."""
        lane = self._lanes.pop(name, None)
        if lane is None:
            return
        lane.closed = True
        lane.pending.clear()
        if (task := lane.task) is not None:
            self._closing[name] = task
            task.add_done_callback(
                lambda done: self._closing.pop(name) if self._closing.get(name) is done else None
            )

    def enqueue(self, lane: Lane, fire: datetime, event: TriggerEvent) -> None:
        lane.pending.append((fire, event))
        if lane.task is None:
            lane.task = self.tasks.spawn(self._deliver(lane), name=f"cron-deliver:{lane.name}")

    async def _deliver(self, lane: Lane) -> None:
        """Offer ``lane``'s fires in order until none is left or the trigger is removed."""
        try:
            if lane.previous is not None and not lane.previous.done():
                await asyncio.wait({lane.previous}, timeout=self._sink_timeout_s + SAVE_TIMEOUT_S)
            lane.previous = None
            while lane.pending and not lane.closed:
                head = lane.pending[0]
                await self._offer(lane, *head)
                if lane.pending and lane.pending[0] is head:
                    lane.pending.popleft()
        finally:
            lane.task = None

    async def _offer(self, lane: Lane, fire: datetime, event: TriggerEvent) -> None:
        """Await the sink with ``event`` until it commits (then persist the watermark) or ``lane`` closes."""
        result = await offer_until_committed(
            lambda: self._try(lane, event),
            failed="cron_fire_not_committed",
            base=RETRY_BASE_S,
            cap=RETRY_CAP_S,
            closed=lambda: lane.closed,
            trigger=lane.name,
            scheduled=event.dedupe_key,
        )
        if result is None:
            return
        # Fires due together reach the sink first; the bookkeeping of each waits its turn after them.
        await asyncio.sleep(0)
        log.debug(
            "cron_fired",
            trigger=lane.name,
            scheduled=event.dedupe_key,
            late_ms=round((time.time() - fire.timestamp()) * 1000, 1),
            outcome=result.outcome,
            run_id=result.run_id,
        )
        self._committed(lane.name, fire)
        await self._persist(lane.name, fire)

    async def _try(self, lane: Lane, event: TriggerEvent) -> EventResult | None:
        """One offer, within the limit of sink calls at once; None when ``lane`` closed meanwhile."""
        async with self._limit:
            if lane.closed:
                return None
            return await self._commit(lane, event)

    async def _commit(self, lane: Lane, event: TriggerEvent) -> EventResult:
        """One sink call, bounded by ``sink_timeout_s``: the scheduler's sweep cancels an overdue one (a
        shared sweep rather than a timer per call keeps the fire path short), raised as ``TimeoutError``."""
        assert self.sink is not None
        self._in_sink[lane] = time.monotonic() + self._sink_timeout_s
        try:
            return await self.sink(event)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if lane.overdue and task is not None and task.uncancel() == 0:
                raise TimeoutError(f"the sink took longer than {self._sink_timeout_s} s") from None
            raise
        finally:
            lane.overdue = False
            self._in_sink.pop(lane, None)

    def sweep(self, now: float) -> None:
        """Cancel the sink calls past their deadline (``_commit`` turns that into a ``TimeoutError``)."""
        for lane, deadline in list(self._in_sink.items()):
            if deadline <= now and not lane.overdue and lane.task is not None:
                lane.overdue = True
                lane.task.cancel()

    async def _persist(self, name: str, fire: datetime) -> None:
        """Save the watermark. A save that fails or is cancelled leaves the older one, which only means
        that catch-up may offer this committed fire again: a duplicate, harmless by its dedupe key."""
        assert self.save_state is not None
        try:
            async with asyncio.timeout(SAVE_TIMEOUT_S):
                await self.save_state(name, {"last_fire": fire.isoformat()})
        except Exception as exc:
            log.warning("cron_state_not_saved", trigger=name, scheduled=fire.isoformat(), error=repr(exc))
