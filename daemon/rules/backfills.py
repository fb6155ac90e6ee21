"""What a backfill replays and how fast, decided without I/O: its time range as a user writes it,
the fires (cron) or files (files) in it from a position on, and how many of its runs may start.

A backfill's events are the very events the live source makes (same dedupe key, same fields), so a
fire or a file that already made an event is a duplicate and nothing runs twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from daemon.documents.specs import Concurrency
from daemon.errors import Conflict, Invalid
from daemon.rules.admission import Slots, Verdict, disabled
from triggers.cronplan import Schedule

MAX_EVENTS = 100_000
"""The most events one backfill may make (a year of every-five-minute fires is 105,120)."""
DEFAULT_MAX_ACTIVE = 4
"""Runs of a backfill active at once when neither the request nor the pipeline's
``concurrency.max_active_runs`` says (with a limit N of 2 or more, the default is N - 1: a slot stays
for live fires)."""
REPLAYABLE = ("cron", "files")
"""Sources with a history to replay; ``nats`` and ``run`` events are gone once they happened."""

_TICK = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check_range(start: datetime, end: datetime, now: datetime) -> None:
    """Raises ``Invalid`` unless ``end`` comes after ``start`` and is not later than ``now``: a fire
    yet to come is the live trigger's (replayed now, it would run early and the real one be a
    duplicate)."""
    if end <= start:
        raise Invalid(
            f"to: {end.isoformat()} is not after from ({start.isoformat()}); the range is [from, to)"
        )
    if end > now:
        raise Invalid(
            f"to: {end.isoformat()} is later than now ({now.isoformat()}); a backfill replays the past, "
            "the live trigger makes what is to come"
        )


def max_active(requested: int | None, pipeline_limit: int | None) -> int:
    """The backfill's limit on its active runs: as requested, else one less than the pipeline's own
    (at least 1: a pipeline limit of 2 or more keeps a slot for live fires), else
    ``DEFAULT_MAX_ACTIVE``."""
    if requested is not None:
        if requested < 1:
            raise Invalid(f"max_active: must be at least 1, not {requested}")
        return requested
    return max(1, pipeline_limit - 1) if pipeline_limit else DEFAULT_MAX_ACTIVE


# --- cron -------------------------------------------------------------------------------------------


def cron_fires(
    schedule: Schedule, start: datetime, end: datetime, *, after: datetime | None, limit: int
) -> list[datetime]:
    """Up to ``limit`` fires in [``start``, ``end``), after ``after`` (the position: the last fire
    offered) when given, oldest first, in UTC; the live source's own DST rules (``Schedule``)."""
    low = start - _TICK if after is None else max(after, start - _TICK)
    found: list[datetime] = []
    for fire in schedule.fires(low, end - _TICK):
        found.append(fire)
        if len(found) == limit:
            break
    return found


def count_cron_fires(schedule: Schedule, start: datetime, end: datetime) -> int:
    """How many fires [``start``, ``end``) holds. Raises ``Invalid`` past ``MAX_EVENTS``."""
    count = 0
    for _ in schedule.fires(start - _TICK, end - _TICK):
        count += 1
        if count > MAX_EVENTS:
            raise Invalid(f"from, to: the range holds more than {MAX_EVENTS:,} fires; backfill it in parts")
    return count


# --- files ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class FileAt:
    """A matching file present now, ordered by modification time then path (the backfill's order)."""

    mtime_ns: int
    path: str
    size: int

    @property
    def cursor(self) -> str:
        return f"{self.mtime_ns}:{self.path}"


def files_in_range(found: Iterable[tuple[str, int, int]], start: datetime, end: datetime) -> list[FileAt]:
    """The files (path, mtime_ns, size) whose modification time lies in [``start``, ``end``), in
    backfill order. Raises ``Invalid`` past ``MAX_EVENTS``."""
    low, high = _ns(start), _ns(end)
    files = sorted(FileAt(mtime, path, size) for path, mtime, size in found if low <= mtime < high)
    if len(files) > MAX_EVENTS:
        raise Invalid(f"from, to: the range holds more than {MAX_EVENTS:,} files; backfill it in parts")
    return files


def files_after(files: list[FileAt], position: str | None) -> list[FileAt]:
    """The files still to offer after ``position`` (the cursor of the last one offered)."""
    if position is None:
        return files
    mtime, _, path = position.partition(":")
    mark = (int(mtime), path)
    return [item for item in files if (item.mtime_ns, item.path) > mark]


def batch_windows(files: list[FileAt], start: datetime, batch_s: float) -> Iterator[tuple[int, list[FileAt]]]:
    """The files grouped by ``batch_s``-long windows of modification time from ``start`` (a batching
    trigger makes one event per window), as (window index, files), oldest first."""
    width = max(1, int(batch_s * 1e9))
    window: list[FileAt] = []
    index = -1
    for item in files:
        current = (item.mtime_ns - _ns(start)) // width
        if window and current != index:
            yield index, window
            window = []
        index = current
        window.append(item)
    if window:
        yield index, window


def _ns(instant: datetime) -> int:
    return (instant - _EPOCH) // _TICK * 1000


# --- the limit on active runs ----------------------------------------------------------------------


def waits(trigger: str, *, paused: bool, pipeline: str, version: int, status: str) -> Verdict | None:
    """A backfill's event that is not recorded now, whatever its run (``deferred``), or None: its
    trigger is paused (it resumes with the trigger; recorded ``skipped``, its key would be used up)
    or its version disabled (the backfill fails with that reason; not an event rejected per fire)."""
    if paused:
        return Verdict("deferred", Conflict(f"trigger {trigger} is paused"))
    if status == "disabled":
        return Verdict("deferred", disabled(pipeline, version))
    return None


class Allowance:
    """The runs a backfill may still start in one turn: ``free`` slots. A run over as it is made
    (every step reused) takes none; once a run is refused, every later one of the turn is too, so
    the backfill's position stays a clean prefix. ``started`` keeps the ids of the runs that took a
    slot (the caller watches them end)."""

    __slots__ = ("free", "refused", "started")

    def __init__(self, free: int) -> None:
        self.free = free
        self.refused = False
        self.started: list[UUID] = []

    def take(self, run_id: UUID, *, finished: bool) -> bool:
        if self.refused:
            return False
        if finished:
            return True
        if self.free <= 0:
            self.refused = True
            return False
        self.free -= 1
        self.started.append(run_id)
        return True

    def refuse(self, run_id: UUID) -> None:
        """The run of ``run_id`` taken is not made after all: its slot is free again, and every later
        run of the turn is refused."""
        if run_id in self.started:
            self.started.remove(run_id)
            self.free += 1
        self.refused = True


def take_slot(
    slots: Slots,
    allowance: Allowance | None,
    pipeline: str,
    limit: Concurrency | None,
    run_id: UUID,
    *,
    finished: bool,
) -> Verdict:
    """The verdict on a run (:meth:`Slots.take`); for a backfill's run (``allowance`` given) also its
    backfill's rule: ``deferred`` — no slot taken, nothing recorded, offered again later — when the
    backfill has no slot free, or when the pipeline's limit would hold or skip it (skipped, its fire
    would be lost; held, it would wait outside the backfill's count)."""
    if allowance is None:
        return slots.take(pipeline, limit, finished=finished)
    if not allowance.take(run_id, finished=finished):
        return Verdict("deferred", Conflict("its backfill has no free slot"))
    verdict = slots.take(pipeline, limit, finished=finished)
    if verdict.outcome != "run":
        allowance.refuse(run_id)
        return Verdict("deferred", Conflict(f"pipeline {pipeline} is at its concurrency limit"))
    return verdict


class Pace:
    """How many events a backfill offers in its next turn. A deferred event costs the work of a run
    (planning, fingerprints) for nothing, so after a turn that deferred one, only as many as there
    are free slots; full batches again once a turn shows a run that took no slot (over as it was
    made: every step reused) and deferred nothing."""

    __slots__ = ("narrow",)

    def __init__(self) -> None:
        self.narrow = False

    def size(self, batch: int, free: int) -> int:
        return min(batch, free) if self.narrow else batch

    def after(self, allowance: Allowance, committed: int, *, deferred: bool) -> None:
        """A turn ended: ``committed`` of its events were recorded, ``deferred`` one waits."""
        self.narrow = deferred or (self.narrow and committed <= len(allowance.started))
