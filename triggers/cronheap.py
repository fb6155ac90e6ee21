"""The cron source's next fires, in time order: each trigger's next fire planned (with its event, made
ahead so that the fire path stays short) and kept in a heap of ``(next fire, generation, trigger)``.

Pushing and popping cost O(log n); a changed or removed trigger leaves its entry behind, stale (its
generation is no longer the trigger's), skipped when popped and dropped by a rebuild once stale
entries outnumber live ones. No I/O: the scheduler loop in :mod:`triggers.cron` drives it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping
from datetime import UTC, datetime

import structlog

from triggers.base import TriggerEvent
from triggers.cronplan import Schedule
from triggers.specs import CronSource as CronSpec

log = structlog.get_logger(__name__)

STALE_SLACK = 1000
"""Stale entries tolerated beyond the number of live triggers before the heap is rebuilt."""


class CronEntry:
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


Due = tuple[CronEntry, datetime, TriggerEvent]


class FireHeap:
    """The live triggers' next fires, earliest first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []  # (POSIX time of the next fire, generation, name)
        self._stale = 0
        self._generations = itertools.count(1)

    def generation(self) -> int:
        """A generation no entry had: an entry planned under it makes any older one stale."""
        return next(self._generations)

    @property
    def earliest(self) -> float | None:
        """The POSIX time of the earliest entry (maybe stale), or None when there is none."""
        return self._heap[0][0] if self._heap else None

    def plan(self, entry: CronEntry, after: datetime) -> bool:
        """Plans ``entry``'s first fire after ``after`` and pushes it; False when it has none (an
        unplannable or exhausted schedule, logged)."""
        try:
            entry.next_fire = entry.schedule.next_after(after)
        except ValueError as exc:
            entry.next_fire, entry.error = None, str(exc)
            log.error("cron_trigger_unplannable", trigger=entry.name, error=str(exc))
            return False
        if entry.next_fire is None:
            entry.next_event = None
            log.warning("cron_trigger_exhausted", trigger=entry.name, cron=entry.spec.cron)
            return False
        entry.next_event = fire_event(entry.name, entry.schedule, entry.next_fire)
        self._push(entry)
        return True

    def retire(self, entry: CronEntry) -> None:
        """``entry``'s heap entry no longer counts (its trigger changed or was removed)."""
        self._stale += entry.next_fire is not None

    def pop_due(self, now: float, entries: Mapping[str, CronEntry]) -> list[Due]:
        """The live fires due at ``now`` (POSIX time), earliest first, with their events."""
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, generation, name = heapq.heappop(heap)
            entry = entries.get(name)
            if entry is None or entry.generation != generation or entry.next_event is None:
                self._stale -= 1
                continue
            due.append((entry, entry.next_fire, entry.next_event))
        return due

    def too_stale(self, live: int) -> bool:
        return self._stale > live + STALE_SLACK

    def rebuild(self, entries: Mapping[str, CronEntry]) -> None:
        """The heap anew from the live triggers: drops stale entries (a change or removal leaves one)."""
        self._heap, self._stale = [], 0
        for entry in entries.values():
            if entry.next_fire is None:
                continue
            if entry.queued == entry.next_fire:
                self.plan(entry, entry.next_fire)
            else:
                self._push(entry)

    def _push(self, entry: CronEntry) -> None:
        assert entry.next_fire is not None
        heapq.heappush(self._heap, (entry.next_fire.timestamp(), entry.generation, entry.name))


def fire_event(name: str, schedule: Schedule, fire: datetime) -> TriggerEvent:
    """The event of trigger ``name``'s fire at ``fire`` (UTC): keyed by the instant in UTC, with the
    scheduled time and date on the trigger's own wall clock."""
    local = schedule.local(fire)
    return TriggerEvent(
        trigger=name,
        dedupe_key=fire.astimezone(UTC).isoformat(),
        fields={"scheduled_time": local.isoformat(), "scheduled_date": local.date().isoformat()},
    )
