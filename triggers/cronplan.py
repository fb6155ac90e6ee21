"""When a cron trigger fires: pure planning, no I/O, every answer a function of the ``now`` it is given.

APScheduler 3's ``CronTrigger`` finds the next matching wall-clock time in the trigger's zone; this
module turns its answers into UTC instants with crontab's rules for daylight-saving changes, which
are those of Vixie cron (cron(8)): a *fixed-time* job (second, minute and hour fields not starting
with ``*``, e.g. ``30 2 * * *``) runs once per day it matches, a *wildcard* job (``*/15 * * * *``,
``0 * * * *``) runs by the clock as it is.

- Spring forward (the clock jumps, e.g. 02:00 → 03:00 in Europe/Madrid): a wall time in the gap does
  not exist. A fixed-time job due in the gap fires once, at the change (03:00 local: the first instant
  after the gap); a wildcard job's times in the gap are skipped (an hourly or every-15-minutes job
  keeps its real-time rhythm). APScheduler alone would fire the 02:30 job at 03:30 (02:30 on the old
  offset).
- Fall back (the clock repeats an hour, e.g. 03:00 → 02:00): a fixed-time job fires on the first pass
  only; a wildcard job fires on both passes, once per distinct UTC instant. APScheduler alone would run
  a ``30 2 * * *`` job twice that night.

Dedupe keys are UTC instants, so a wildcard job's repeated wall times stay distinct.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from triggers.crontab import cron_trigger

Catchup = Literal["none", "latest", "all"]

CATCHUP_LIMIT = 1000
"""At most this many missed fires are offered by ``catchup: all`` (the newest ones)."""
SCAN_LIMIT = 10_000
"""At most this many missed fires are counted (~0.5 s of work); past it the count reads "at least"."""
_SEARCH_STEPS = 10_000
_TICK = timedelta(microseconds=1)


@functools.lru_cache(maxsize=4096)
def _cached_trigger(expr: str, timezone: str) -> CronTrigger:
    # Building a CronTrigger is slow next to using one; it holds no state between calls, so equal
    # specs share one.
    return cron_trigger(expr, timezone)


class Schedule:
    """The fire times of one cron expression in one time zone, as aware UTC datetimes.

    Raises ``ValueError`` (from ``cron_trigger``) when the expression or the zone is not valid.
    """

    def __init__(self, expr: str, timezone: str) -> None:
        self.expr = expr
        self.trigger = _cached_trigger(expr, timezone)
        self.zone: ZoneInfo = self.trigger.timezone
        by_name = {field.name: str(field) for field in self.trigger.fields}
        self.fixed_time = not any(by_name[name].startswith("*") for name in ("second", "minute", "hour"))

    def next_after(self, instant: datetime) -> datetime | None:
        """The first fire strictly after ``instant`` (aware), in UTC; ``None`` when there is none."""
        cursor = instant
        for _ in range(_SEARCH_STEPS):
            found = self.trigger.get_next_fire_time(None, cursor + _TICK)
            if found is None:
                return None
            fire = found.astimezone(UTC)
            local = fire.astimezone(self.zone)
            shift = local.replace(tzinfo=None) - found.replace(tzinfo=None)
            if shift:
                # ``found`` is a wall time in a spring-forward gap (read on the offset before it), so the
                # change happened less than ``shift`` before ``fire``.
                if self.fixed_time:
                    change = _offset_change(self.zone, fire - shift, fire)
                    if change > instant:
                        return change
            elif not (self.fixed_time and local.fold == 1 and _ambiguous(local)):
                return fire
            cursor = fire
        raise ValueError(f"cron {self.expr!r}: no fire found within {_SEARCH_STEPS} candidates")

    def fires(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """The fires in (``after``, ``until``], oldest first."""
        fire = self.next_after(after)
        while fire is not None and fire <= until:
            yield fire
            fire = self.next_after(fire)

    def local(self, fire: datetime) -> datetime:
        """``fire`` on the trigger's wall clock."""
        return fire.astimezone(self.zone)


def _ambiguous(local: datetime) -> bool:
    """Whether the wall time of ``local`` occurs twice (a fall-back hour)."""
    return local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset()


def _offset_change(zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The first instant in (``low``, ``high``] whose UTC offset in ``zone`` is that of ``high``, to the
    second (zone changes happen on whole seconds)."""
    target = high.astimezone(zone).utcoffset()
    low_s, high_s = int(low.timestamp()), int(high.timestamp())
    while high_s - low_s > 1:
        middle = (low_s + high_s) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == target:
            high_s = middle
        else:
            low_s = middle
    return datetime.fromtimestamp(high_s, UTC)


class CatchupPlan:
    """What to do about the fires missed between the last fire and now: ``fire`` these (oldest first);
    ``missed`` fires were due in all (``missed_exact`` False when counting stopped at ``SCAN_LIMIT``)."""

    __slots__ = ("fire", "missed", "missed_exact")

    def __init__(self, fire: list[datetime], missed: int, missed_exact: bool) -> None:
        self.fire = fire
        self.missed = missed
        self.missed_exact = missed_exact

    @property
    def skipped(self) -> int:
        return self.missed - len(self.fire)


def plan_catchup(
    schedule: Schedule, policy: Catchup, last_fire: datetime, now: datetime, limit: int = CATCHUP_LIMIT
) -> CatchupPlan:
    """The catch-up for fires in (``last_fire``, ``now``] that no daemon ran: ``none`` fires none,
    ``latest`` the most recent one, ``all`` each of them, capped at the newest ``limit``."""
    missed, exact = count_fires(schedule, last_fire, now)
    if missed == 0 or policy == "none":
        return CatchupPlan([], missed, exact)
    fire = newest_fires(schedule, last_fire, now, 1 if policy == "latest" else limit)
    return CatchupPlan(fire, missed, exact)


def count_fires(
    schedule: Schedule, after: datetime, until: datetime, cap: int = SCAN_LIMIT
) -> tuple[int, bool]:
    """How many fires fall in (``after``, ``until``], counting at most ``cap``; and whether that count is
    exact."""
    count = 0
    for _ in schedule.fires(after, until):
        if count == cap:
            return count, False
        count += 1
    return count, True


def newest_fires(schedule: Schedule, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """The newest ``limit`` fires in (``after``, ``until``], oldest first, without walking every fire since
    ``after`` (which may be months of every-second fires): windows ending at ``until`` grow until they
    hold enough, and a window too dense to scan is split."""
    newest: list[datetime] = []  # newest first
    high = until
    span = timedelta(seconds=1)
    for _ in range(_SEARCH_STEPS):
        wanted = limit - len(newest)
        if wanted <= 0 or high <= after:
            break
        low = max(after, high - span)
        window: deque[datetime] = deque(maxlen=wanted)
        for scanned, fire in enumerate(schedule.fires(low, high), 1):
            window.append(fire)
            if scanned > 4 * limit + 64:
                break
        else:
            if len(window) < wanted and low > after:
                span *= 4  # too few in this window: look further back
                continue
            newest.extend(reversed(window))
            break
        # Too dense to scan whole: keep the smaller window that was complete, and go on below it.
        half = max(low, high - span / 4)
        kept = list(schedule.fires(half, high))
        newest.extend(reversed(kept[-wanted:]))
        high, span = half, timedelta(seconds=1)
    return sorted(newest[:limit])
