"""The ``cron`` source: fires of cron expressions, each offered to the daemon once it is due.

APScheduler 3 answers *when* (``CronTrigger``: fields, time zones, DST; with crontab's DST rules on
top, see ``triggers.cronplan``); the cron source owns *how fires are queued*, because APScheduler's
job store re-sorts a list on every fire. One scheduler task keeps the triggers' next fires in a heap
(``triggers.cronheap``) and sleeps until the earliest (at most ``MAX_SLEEP_S``, so a wall-clock step
is noticed); ``put``/``remove`` wake it early. Should an iteration raise, its supervisor
(``kit.supervise``) logs it, rebuilds the heap from the triggers (no popped fire is lost) and runs it
again.

The hot path is kept short, since fires due in the same second reach the sink one after another: each
fire's event is made when it is planned, ahead of time; the next fires are planned and the watermarks
saved only after every due fire reached the sink.

Delivery (``triggers.cronlanes``): each due fire joins its trigger's lane, delivered in order, lanes
side by side. A late fire still fires (there is no misfire grace); a fire whose sink call fails is
offered again until it is committed or its trigger is removed, and because the watermark moves only
after a commit, a fire lost to a crash comes back through catch-up (its dedupe key makes a repeat
harmless).

Catch-up, when ``put`` starts a trigger whose state holds ``last_fire``: the fires in (last fire, now]
that no daemon ran are skipped (``none``), offered once for the newest (``latest``) or all offered, oldest
first, capped at the newest ``CATCHUP_LIMIT`` (``all``). Without state the trigger starts from now.
A changed spec for a running trigger is re-planned from now, without catch-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from kit.backoff import Backoff
from kit.supervise import supervise
from triggers.base import EventSink, SaveState, Source, TriggerConfig, TriggerError
from triggers.cronheap import CronEntry, FireHeap, fire_event
from triggers.cronlanes import STOP_TIMEOUT_S, Lanes
from triggers.cronplan import CatchupPlan, Schedule, plan_catchup
from triggers.specs import CronSource as CronSpec

log = structlog.get_logger(__name__)

MAX_SLEEP_S = 30.0
SINK_TIMEOUT_S = 60.0
RESTART_BASE_S = 1.0
RESTART_CAP_S = 30.0
SWEEP_S = 1.0
SINK_CALLS = 256
"""Sink calls at once (the lanes' bound): a fire due beyond it is handed to the sink only once a call
returns, a commit later, so it is as late as that commit. The daemon's sink returns after its commit;
with 100 triggers due every second and 64 here, the 36 last of each second were handed over 50-350 ms
late. It bounds the events queued in front of the sink's commits, not the tasks (a lane has one)."""


class CronSource(Source):
    """Cron triggers, thousands of them, on one scheduler task. See the module docstring."""

    kind = "cron"

    def __init__(self, *, concurrency: int = SINK_CALLS, sink_timeout_s: float = SINK_TIMEOUT_S) -> None:
        self._triggers: dict[str, CronEntry] = {}
        self._fires = FireHeap()
        self._lanes = Lanes(concurrency=concurrency, sink_timeout_s=sink_timeout_s, committed=self._committed)
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    # -- Source -----------------------------------------------------------------------------------

    async def start(self, stack: contextlib.AsyncExitStack, sink: EventSink, save_state: SaveState) -> None:
        if self._loop_task is not None:
            raise RuntimeError("cron source already started")
        self._lanes.sink, self._lanes.save_state = sink, save_state
        scheduler = supervise(
            self._serve,
            name="cron-scheduler-serve",
            crashed="cron_scheduler_crashed",
            delays=Backoff(RESTART_BASE_S, RESTART_CAP_S),
            fresh_after_s=RESTART_CAP_S,
            context=lambda: {"triggers": len(self._triggers)},
            # Fires popped but not queued are still next_fire: a rebuild pushes them again.
            on_crash=lambda _exc: self._fires.rebuild(self._triggers),
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
            self._fires.retire(current)
            current.spec, current.schedule, current.error = spec, schedule, None
            current.generation = self._fires.generation()
            self._plan(current, now)
            log.info("cron_trigger_replanned", trigger=name, cron=spec.cron, timezone=spec.timezone)
            return

        entry = CronEntry(name, spec, schedule, self._fires.generation())
        entry.last_fire = _parse_instant(name, trigger.state.get("last_fire"))
        self._triggers[name] = entry
        lane = self._lanes.open(name)
        if entry.last_fire is not None and entry.last_fire < now:
            plan = await asyncio.to_thread(plan_catchup, schedule, spec.catchup, entry.last_fire, now)
            if self._triggers.get(name) is not entry or entry.schedule is not schedule:
                return  # removed or changed while the catch-up was planned: that call planned anew
            self._log_catchup(name, spec, plan)
            for fire in plan.fire:
                self._lanes.enqueue(lane, fire, fire_event(name, schedule, fire))
        self._plan(entry, now)
        log.info("cron_trigger_started", trigger=name, cron=spec.cron, timezone=spec.timezone)

    async def remove(self, name: str) -> None:
        entry = self._triggers.pop(name, None)
        if entry is None:
            return
        self._fires.retire(entry)
        self._lanes.close(name)
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

    def _plan(self, entry: CronEntry, after: datetime) -> None:
        """Push ``entry``'s first fire after ``after`` and wake the scheduler to see it."""
        if self._fires.plan(entry, after):
            self._wake.set()

    def _committed(self, name: str, fire: datetime) -> None:
        entry = self._triggers.get(name)
        if entry is not None and (entry.last_fire is None or fire > entry.last_fire):
            entry.last_fire = fire

    async def _serve(self) -> None:
        """The scheduler loop; should an iteration raise, ``start``'s supervisor rebuilds the heap and
        runs it again."""
        while True:
            self._wake.clear()
            due = self._fires.pop_due(time.time(), self._triggers)
            if due:
                lanes = self._lanes
                for entry, fire, event in due:
                    entry.queued = fire
                    lanes.enqueue(lanes[entry.name], fire, event)
                # Let the deliveries reach the sink before the next fires are planned.
                await asyncio.sleep(0)
                for entry, fire, _ in due:
                    if self._triggers.get(entry.name) is entry and entry.next_fire == fire:
                        self._plan(entry, fire)
                if self._fires.too_stale(len(self._triggers)):
                    self._fires.rebuild(self._triggers)
                continue
            delay = MAX_SLEEP_S
            if self._lanes.in_sink:
                self._lanes.sweep(time.monotonic())
                delay = SWEEP_S
            if (earliest := self._fires.earliest) is not None:
                delay = min(delay, earliest - time.time())
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

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

    async def _stop(self) -> None:
        """Stop planning, then cancel and await every delivery: no sink call is in flight afterwards."""
        if (task := self._loop_task) is not None:
            task.cancel()
            _, pending = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
            if pending:
                log.warning("cron_scheduler_not_stopped")
        await self._lanes.tasks.aclose()
        self._loop_task = None
        log.info("cron_source_stopped", triggers=len(self._triggers))


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
