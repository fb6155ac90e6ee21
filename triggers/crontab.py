"""Cron expressions as crontab(5) writes them, as APScheduler 3 triggers.

APScheduler 3 numbers weekdays from 0 = Monday, crontab from 0 = Sunday (7 is Sunday too), and its
``CronTrigger.from_crontab`` passes the numbers through unchanged. So the day-of-week field is
translated here into day names, which both read alike. crontab fires when either the day of month or
the day of week matches if both are restricted, APScheduler only when both match: rather than pick
one meaning silently, such expressions are refused.
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAY_TERM = re.compile(r"(?:\*|(?P<first>\w+)(?:-(?P<last>\w+))?)(?:/(?P<step>\d+))?")


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ``ValueError`` when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def cron_trigger(expr: str, timezone: str) -> CronTrigger:
    """The trigger for ``expr``: 5 fields (minute hour day-of-month month day-of-week) or 6 with
    seconds first, in crontab's meaning, evaluated in ``timezone``.

    Raises ``ValueError`` with the reason when the expression or the time zone is not valid.
    """
    fields = expr.split()
    if len(fields) == 5:
        fields.insert(0, "0")
    elif len(fields) != 6:
        raise ValueError(
            f"expected 5 fields (minute hour day month weekday) or 6 (seconds first), got {len(fields)}"
        )
    second, minute, hour, day, month, day_of_week = fields
    if day != "*" and day_of_week != "*":
        raise ValueError("restrict the day of month or the day of week, not both")
    return CronTrigger(
        second=second,
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_day_of_week(day_of_week),
        timezone=zone(timezone),
    )


def _day_of_week(field: str) -> str:
    """A crontab day-of-week field as a list of day names, e.g. ``1-5`` -> ``mon,tue,wed,thu,fri``."""
    if field == "*":
        return field
    days: set[int] = set()
    for term in field.split(","):
        match = _DAY_TERM.fullmatch(term)
        step = int(match.group("step") or 1) if match else 0
        if not match or step == 0:
            raise ValueError(f"bad day of week {term!r}")
        first, last = 0, 7  # crontab's full range of weekdays, Sunday at both ends
        if match.group("first"):
            first = _day_number(match.group("first"))
            if match.group("last"):
                last = _day_number(match.group("last"))
                if last == 0 and first > 0:
                    last = 7  # a range ending on Sunday, e.g. fri-sun
            elif not match.group("step"):
                last = first
        if first > last:
            raise ValueError(f"bad day of week range {term!r}")
        days.update(day % 7 for day in range(first, last + 1, step))
    return ",".join(_DAYS[day] for day in sorted(days))


def _day_number(token: str) -> int:
    """0-7 (0 and 7 = Sunday) or a three-letter English name."""
    if token.isdigit() and int(token) <= 7:
        return int(token)
    if token.lower() in _DAYS:
        return _DAYS.index(token.lower())
    raise ValueError(f"bad day of week {token!r}")
