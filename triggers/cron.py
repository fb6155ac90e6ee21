"""The ``cron`` source: fires of cron expressions, each offered to the daemon once it is due.

APScheduler 3 answers *when* (``CronTrigger``: fields, time zones, DST; with crontab's DST rules on
top, see ``triggers.cronplan``); this module owns *how fires are queued*, because APScheduler's job
store re-sorts a list on every fire (p99 273 ms late at 10,000 jobs). Here one scheduler task keeps a
heap of ``(next fire, generation, trigger)``: ``put`` and a fire cost O(log n), a changed or removed
trigger leaves a stale entry that is skipped (and the heap is rebuilt when stale entries outnumber live
ones). The task sleeps until the earliest fire (at most ``MAX_SLEEP_S``, so a wall-clock step is noticed),
and ``put``/``remove`` wake it early. Should an iteration raise, its supervisor (``kit.supervise``) logs
it, rebuilds the heap from the triggers (no popped fire is lost) and runs it again.

The hot path is kept short, since fires due in the same second (~170 a second with 10,000 once-a-minute
triggers) reach the sink one after another: each fire's event is made when it is planned, a minute
ahead; each sink call is bounded by one periodic sweep instead of a timer per call; the next fires are
planned (~50 µs each in APScheduler) and the watermarks saved only after every due fire reached the sink.

Delivery: each due fire joins its trigger's *lane*, a queue that one task drains in order: await the
sink, then persist ``{"last_fire": ISO UTC}``. Lanes run side by side (at most ``concurrency`` sink
calls at once), so a slow commit delays only its own trigger. A late fire still fires (there is no
misfire grace); a fire whose sink call fails is offered again with capped exponential backoff until it
is committed or its trigger is removed (``kit.offer``), and because the watermark moves only after a
commit, a fire lost to a crash comes back through catch-up (its dedupe key makes a repeat harmless).

Catch-up, when ``put`` starts a trigger whose state holds ``last_fire``: the fires in (last fire, now]
that no daemon ran are skipped (``none``), offered once for the newest (``latest``) or all offered, oldest
first, capped at the newest ``CATCHUP_LIMIT`` (``all``). Without state the trigger starts from now.
A changed spec for a running trigger is re-planned from now, without catch-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from kit.backoff import Backoff
from kit.offer import offer_until_committed
from kit.supervise import supervise
from triggers.base import (
    EventResult,
    EventSink,
    SaveState,
    Source,
    TriggerConfig,
    TriggerError,
    TriggerEvent,
)
from triggers.cronplan import CatchupPlan, Schedule, plan_catchup
from triggers.specs import CronSource as CronSpec

log = structlog.get_logger(__name__)

MAX_SLEEP_S = 30.0
SINK_TIMEOUT_S = 60.0
SAVE_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
RETRY_BASE_S = 0.1
RETRY_CAP_S = 30.0
RESTART_BASE_S = 1.0
RESTART_CAP_S = 30.0
SWEEP_S = 1.0


class _Trigger:
    """One running trigger: its schedule and its place in the heap (``generation`` names the one live
    heap entry; any other entry for the name is stale)."""

    __slots__ = (
        "error",
        "generation",
        "last_fire",
        "name",
        "next_event",
        "next_fire",
        "queued",
        "schedule",
        "spec",
    )

    def __init__(self, name: str, spec: CronSpec, schedule: Schedule, generation: int) -> None:
        self.name = name
        self.spec = spec
        self.schedule = schedule
        self.generation = generation
        self.next_fire: datetime | None = None
        self.next_event: TriggerEvent | None = None  # made when planned, not when due: off the hot path
        self.queued: datetime | None = None  # the latest fire handed to the lane
        self.last_fire: datetime | None = None
        self.error: str | None = None


class _Lane:
    """The fires of one trigger awaiting delivery, oldest first, and the one task that delivers them."""

    __slots__ = ("closed", "name", "overdue", "pending", "previous", "task")

    def __init__(self, name: str, previous: asyncio.Task | None) -> None:
        self.name = name
        self.pending: deque[tuple[datetime, TriggerEvent]] = deque()
        self.task: asyncio.Task | None = None
        self.previous = previous  # the lane of an earlier put of this name, maybe still in a sink call
        self.closed = False
        self.overdue = False  # its sink call ran past the sink timeout and was cancelled for that


class CronSource(Source):
    """Cron triggers, thousands of them, on one scheduler task. See the module docstring."""

    kind = "cron"

    def __init__(self, *, concurrency: int = 64, sink_timeout_s: float = SINK_TIMEOUT_S) -> None:
        self._sink_timeout_s = sink_timeout_s
        self._triggers: dict[str, _Trigger] = {}
        self._lanes: dict[str, _Lane] = {}
        self._closing: dict[str, asyncio.Task] = {}  # removed triggers' lanes still in a sink call
        self._heap: list[tuple[float, int, str]] = []  # (POSIX time of the next fire, generation, name)
        self._stale = 0
        self._generations = itertools.count(1)
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._in_sink: dict[_Lane, float] = {}  # lanes awaiting the sink -> monotonic deadline
        self._loop_task: asyncio.Task | None = None
        self._sink: EventSink | None = None
        self._save_state: SaveState | None = None

    # -- Source -----------------------------------------------------------------------------------

    async def start(self, stack: contextlib.AsyncExitStack, sink: EventSink, save_state: SaveState) -> None:
        if self._loop_task is not None:
            raise RuntimeError("cron source already started")
        self._sink, self._save_state = sink, save_state
        scheduler = supervise(
            self._serve,
            name="cron-scheduler-serve",
            crashed="cron_scheduler_crashed",
            delays=Backoff(RESTART_BASE_S, RESTART_CAP_S),
            fresh_after_s=RESTART_CAP_S,
            context=lambda: {"triggers": len(self._triggers)},
            on_crash=lambda _exc: self._rebuild(),  # fires popped but not queued are still next_fire
        )
        self._loop_task = asyncio.get_running_loop().create_task(scheduler, name="cron-scheduler")
        stack.push_async_callback(self._stop)

    async def put(self, trigger: TriggerConfig) -> None:
        name, spec = trigger.name, trigger.on
        if not isinstance(spec, CronSpec):
            raise TriggerError(f"trigger {name}: not a cron source ({type(spec).__name__})")
        current = self._triggers.get(name)
        if current is not None and current.spec == spec:
            return
        try:
            schedule = Schedule(spec.cron, spec.timezone)
        except ValueError as exc:
            raise TriggerError(f"trigger {name}: {exc}") from None
        now = datetime.now(UTC)
        if current is not None:
            self._stale += current.next_fire is not None
            current.spec, current.schedule, current.error = spec, schedule, None
            current.generation = next(self._generations)
            self._plan(current, now)
            log.info("cron_trigger_replanned", trigger=name, cron=spec.cron, timezone=spec.timezone)
            return

        entry = _Trigger(name, spec, schedule, next(self._generations))
        entry.last_fire = _parse_instant(name, trigger.state.get("last_fire"))
        self._triggers[name] = entry
        self._lanes[name] = lane = _Lane(name, self._closing.pop(name, None))
        if entry.last_fire is not None and entry.last_fire < now:
            plan = await asyncio.to_thread(plan_catchup, schedule, spec.catchup, entry.last_fire, now)
            if self._triggers.get(name) is not entry or entry.schedule is not schedule:
                return  # removed or changed while the catch-up was planned: that call planned anew
            self._log_catchup(name, spec, plan)
            for fire in plan.fire:
                self._enqueue(lane, fire, fire_event(name, schedule, fire))
        self._plan(entry, now)
        log.info("cron_trigger_started", trigger=name, cron=spec.cron, timezone=spec.timezone)

    async def remove(self, name: str) -> None:
        entry = self._triggers.pop(name, None)
        if entry is None:
            return
        self._stale += entry.next_fire is not None
        lane = self._lanes.pop(name, None)
        if lane is not None:
            lane.closed = True
            lane.pending.clear()
            if (task := lane.task) is not None:
                self._closing[name] = task
                task.add_done_callback(
                    lambda done: self._closing.pop(name) if self._closing.get(name) is done else None
                )
        self._wake.set()
        log.info("cron_trigger_removed", trigger=name)

    def status(self, name: str) -> Mapping[str, Any]:
        entry = self._triggers.get(name)
        if entry is None:
            return {}
        status: dict[str, Any] = {
            "next_fire": _iso(entry.next_fire),
            "last_fire": _iso(entry.last_fire),
        }
        if entry.error:
            status["error"] = entry.error
        return status

    # -- planning ---------------------------------------------------------------------------------

    def _plan(self, entry: _Trigger, after: datetime) -> None:
        """Push ``entry``'s first fire after ``after`` and wake the scheduler to see it."""
        try:
            entry.next_fire = entry.schedule.next_after(after)
        except ValueError as exc:
            entry.next_fire, entry.error = None, str(exc)
            log.error("cron_trigger_unplannable", trigger=entry.name, error=str(exc))
            return
        if entry.next_fire is None:
            entry.next_event = None
            log.warning("cron_trigger_exhausted", trigger=entry.name, cron=entry.spec.cron)
            return
        entry.next_event = fire_event(entry.name, entry.schedule, entry.next_fire)
        heapq.heappush(self._heap, (entry.next_fire.timestamp(), entry.generation, entry.name))
        self._wake.set()

    async def _serve(self) -> None:
        """The scheduler loop; should an iteration raise, ``start``'s supervisor rebuilds the heap and
        runs it again."""
        while True:
            self._wake.clear()
            due = self._pop_due(time.time())
            if due:
                lanes = self._lanes
                for entry, fire, event in due:
                    entry.queued = fire
                    self._enqueue(lanes[entry.name], fire, event)
                # Let the deliveries reach the sink before the next fires are planned (~50 µs each).
                await asyncio.sleep(0)
                for entry, fire, _ in due:
                    if self._triggers.get(entry.name) is entry and entry.next_fire == fire:
                        self._plan(entry, fire)
                if self._stale > len(self._triggers) + 1000:
                    self._rebuild()
                continue
            delay = MAX_SLEEP_S
            if self._in_sink:
                self._sweep(time.monotonic())
                delay = SWEEP_S
            if self._heap:
                delay = min(delay, self._heap[0][0] - time.time())
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    def _pop_due(self, now: float) -> list[tuple[_Trigger, datetime, TriggerEvent]]:
        due = []
        heap, triggers = self._heap, self._triggers
        while heap and heap[0][0] <= now:
            _, generation, name = heapq.heappop(heap)
            entry = triggers.get(name)
            if entry is None or entry.generation != generation or entry.next_event is None:
                self._stale -= 1
                continue
            due.append((entry, entry.next_fire, entry.next_event))
        return due

    def _rebuild(self) -> None:
        """The heap anew from the live triggers: drops stale entries (a change or removal leaves one)."""
        self._heap, self._stale = [], 0
        for entry in self._triggers.values():
            if entry.next_fire is None:
                continue
            if entry.queued == entry.next_fire:
                self._plan(entry, entry.next_fire)
            else:
                heapq.heappush(self._heap, (entry.next_fire.timestamp(), entry.generation, entry.name))

    def _log_catchup(self, name: str, spec: CronSpec, plan: CatchupPlan) -> None:
        if plan.missed == 0:
            return
        log.info(
            "cron_catchup",
            trigger=name,
            policy=spec.catchup,
            missed=plan.missed if plan.missed_exact else f">={plan.missed}",
            firing=len(plan.fire),
        )
        if spec.catchup == "all" and plan.skipped > 0:
            log.warning(
                "cron_catchup_capped",
                trigger=name,
                skipped=plan.skipped if plan.missed_exact else f">={plan.skipped}",
                oldest_fired=_iso(plan.fire[0]) if plan.fire else None,
            )

    # -- delivery ---------------------------------------------------------------------------------

    def _enqueue(self, lane: _Lane, fire: datetime, event: TriggerEvent) -> None:
        lane.pending.append((fire, event))
        if lane.task is None:
            lane.task = self._spawn(self._deliver(lane), name=f"cron-deliver:{lane.name}")

    def _spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("cron_task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)

    async def _deliver(self, lane: _Lane) -> None:
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

    async def _offer(self, lane: _Lane, fire: datetime, event: TriggerEvent) -> None:
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
        entry = self._triggers.get(lane.name)
        if entry is not None and (entry.last_fire is None or fire > entry.last_fire):
            entry.last_fire = fire
        await self._persist(lane.name, fire)

    async def _try(self, lane: _Lane, event: TriggerEvent) -> EventResult | None:
        """One offer, within the limit of sink calls at once; None when ``lane`` closed meanwhile."""
        async with self._limit:
            if lane.closed:
                return None
            return await self._commit(lane, event)

    async def _commit(self, lane: _Lane, event: TriggerEvent) -> EventResult:
        """One sink call, bounded by ``sink_timeout_s``: the scheduler's sweep cancels an overdue one (a
        shared sweep rather than a timer per call keeps the fire path short), raised as ``TimeoutError``."""
        assert self._sink is not None
        self._in_sink[lane] = time.monotonic() + self._sink_timeout_s
        try:
            return await self._sink(event)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if lane.overdue and task is not None and task.uncancel() == 0:
                raise TimeoutError(f"the sink took longer than {self._sink_timeout_s} s") from None
            raise
        finally:
            lane.overdue = False
            self._in_sink.pop(lane, None)

    def _sweep(self, now: float) -> None:
        """Cancel the sink calls past their deadline (``_commit`` turns that into a ``TimeoutError``)."""
        for lane, deadline in list(self._in_sink.items()):
            if deadline <= now and not lane.overdue and lane.task is not None:
                lane.overdue = True
                lane.task.cancel()

    async def _persist(self, name: str, fire: datetime) -> None:
        """Save the watermark. A save that fails or is cancelled leaves the older one, which only means
        that catch-up may offer this committed fire again: a duplicate, harmless by its dedupe key."""
        assert self._save_state is not None
        try:
            async with asyncio.timeout(SAVE_TIMEOUT_S):
                await self._save_state(name, {"last_fire": fire.isoformat()})
        except Exception as exc:
            log.warning("cron_state_not_saved", trigger=name, scheduled=fire.isoformat(), error=repr(exc))

    async def _stop(self) -> None:
        """Stop planning, then cancel and await every delivery: no sink call is in flight afterwards."""
        tasks = [task for task in (self._loop_task, *self._tasks) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            if pending:
                log.warning("cron_tasks_not_stopped", count=len(pending))
        self._loop_task = None
        log.info("cron_source_stopped", triggers=len(self._triggers))


def fire_event(name: str, schedule: Schedule, fire: datetime) -> TriggerEvent:
    """The event of trigger ``name``'s fire at ``fire`` (UTC): keyed by the instant in UTC, with the
    scheduled time and date on the trigger's own wall clock."""
    local = schedule.local(fire)
    return TriggerEvent(
        trigger=name,
        dedupe_key=fire.astimezone(UTC).isoformat(),
        fields={"scheduled_time": local.isoformat(), "scheduled_date": local.date().isoformat()},
    )


def _iso(instant: datetime | None) -> str | None:
    return instant.isoformat() if instant is not None else None


def _parse_instant(name: str, value: Any) -> datetime | None:
    """A saved ISO 8601 instant, in UTC; ``None`` (logged) when absent or unreadable."""
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        log.warning("cron_state_unreadable", trigger=name, last_fire=repr(value))
        return None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)
