"""A time as a person writes it for a trigger (a backfill's range, the fire a trigger test stands
for): ISO 8601 with an offset as written, one without an offset on the trigger's wall clock, a bare
date at its midnight there."""

from __future__ import annotations

import re
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from daemon.errors import Invalid

EARLIEST_YEAR, LATEST_YEAR = 1900, 9000
"""Times outside these years are refused: nothing was scheduled then, and instants near the ends of
``datetime``'s range overflow when they are moved between zones."""
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_instant(text: str, zone: ZoneInfo, field: str) -> datetime:
    """``text`` as an aware instant (naive: on ``zone``'s wall clock).

    Raises:
        Invalid: naming ``field``, for text that is not such a time, or one outside the years taken.
    """
    value = text.strip()
    try:
        if _DATE.match(value):
            instant = datetime.combine(date.fromisoformat(value), time(), zone)
        else:
            instant = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(
            f"{field}: {text[:60]!r} is not an ISO 8601 time (2024-03-01T00:00:00+01:00) "
            "or a date (2024-03-01)"
        ) from None
    if not EARLIEST_YEAR <= instant.year <= LATEST_YEAR:
        raise Invalid(f"{field}: {text[:60]!r} is outside the years {EARLIEST_YEAR}-{LATEST_YEAR}")
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=zone)
