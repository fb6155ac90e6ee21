"""How values read on a page: times, durations, sizes, statuses (a word and a symbol, never colour
alone). Registered as Jinja2 filters by :mod:`daemon.ui.app`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

STATUS_SYMBOLS: Mapping[str, str] = {
    "succeeded": "✓",
    "failed": "✗",
    "running": "●",
    "dispatched": "●",
    "queued": "○",
    "pending": "○",
    "ready": "○",
    "waiting": "○",
    "held": "◌",
    "reused": "↺",
    "cancelled": "⊘",
    "skipped": "⊘",
    "lost": "✗",
    "draining": "◐",
    "stopped": "⊘",
    "paused": "‖",
    "active": "✓",
    "deprecated": "◐",
    "disabled": "⊘",
    "run": "✓",
    "duplicate": "↺",
    "rejected": "✗",
}


def symbol(status: str | None) -> str:
    return STATUS_SYMBOLS.get(status or "", "·")


def short_id(value: Any) -> str:
    return str(value)[:8]


def as_datetime(value: datetime | str | float | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(value)


def when(value: datetime | str | None, zone: str | None = None) -> str:
    """``2026-12-06 22:31:04 UTC`` (or in ``zone``, labelled with it); empty for no time."""
    moment = as_datetime(value)
    if moment is None:
        return ""
    try:
        tz = ZoneInfo(zone) if zone else UTC
    except (ZoneInfoNotFoundError, ValueError):
        tz, zone = UTC, None
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S ") + (zone or "UTC")


def ago(value: datetime | str | None, now: datetime | None = None) -> str:
    """``3 min ago``, ``in 2 h``: how far a time is from now, for a glance (the exact time goes in a
    title)."""
    moment = as_datetime(value)
    if moment is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    text = span(abs(seconds))
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def span(seconds: float) -> str:
    """``0.4 s``, ``42 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if whole >= size:
            rest = (whole % size) // sub_size
            return f"{whole // size} {unit}" + (f" {rest} {sub}" if rest else "")
    return f"{whole} s"


def duration(start: datetime | str | None, end: datetime | str | None = None) -> str:
    """How long from ``start`` to ``end`` (or until now, while it goes on); empty if not started."""
    begun = as_datetime(start)
    if begun is None:
        return ""
    return span(((as_datetime(end) or datetime.now(UTC)) - begun).total_seconds())


def size(value: int | float | None) -> str:
    """Bytes for people: ``512 B``, ``1.5 GiB``."""
    if value is None:
        return ""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def share(used: float, total: float) -> int:
    """Percent of ``total`` that ``used`` is, for a bar (0 when there is no total)."""
    return 0 if total <= 0 else max(0, min(100, round(100 * used / total)))


FILTERS = {
    "symbol": symbol,
    "short_id": short_id,
    "when": when,
    "ago": ago,
    "duration": duration,
    "size": size,
    "span": span,
}
