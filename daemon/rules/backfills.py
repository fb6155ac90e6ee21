"""What a backfill replays and how fast, decided without I/O: its time range as a user writes it,
the fires (cron) or files (files) in it from a position on, and how many of its runs may start.

A backfill's events are the very events the live source makes (same dedupe key, same fields), so a
fire or a file that already made an event is a duplicate and nothing runs twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

from daemon.errors import Invalid
from triggers.cronplan import Schedule

MAX_EVENTS = 100_000
"""The most events one backfill may make (a year of every-five-minute fires is 105,120)."""
DEFAULT_MAX_ACTIVE = 4
"""Runs of a backfill active at once when neither the request nor the pipeline's
``concurrency.max_active_runs`` says."""
REPLAYABLE = ("cron", "files")
"""Sources with a history to replay; ``nats`` and ``run`` events are gone once they happened."""

_TICK = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_instant(text: str, zone: ZoneInfo, field: str) -> datetime:
    """``text`` as an aware instant: ISO 8601 with an offset as written, one without an offset on the
    trigger's wall clock (``zone``), a bare date at its midnight there.

    Raises ``Invalid`` naming ``field``."""
    value = text.strip()
    try:
        if _DATE.match(value):
            return datetime.combine(date.fromisoformat(value), time(), zone)
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(
            f"{field}: {text[:60]!r} is not an ISO 8601 time (2024-03-01T00:00:00+01:00) "
            "or a date (2024-03-01)"
        ) from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=zone)


def check_range(start: datetime, end: datetime) -> None:
    """Raises ``Invalid`` unless ``end`` comes after ``start``."""
    if end <= start:
        raise Invalid(
            f"to: {end.isoformat()} is not after from ({start.isoformat()}); the range is [from, to)"
        )


def max_active(requested: int | None, pipeline_limit: int | None) -> int:
    """The backfill's limit on its active runs: as requested, else the pipeline's own, else
    ``DEFAULT_MAX_ACTIVE``."""
    if requested is not None:
        if requested < 1:
            raise Invalid(f"max_active: must be at least 1, not {requested}")
        return requested
    return pipeline_limit if pipeline_limit else DEFAULT_MAX_ACTIVE


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
