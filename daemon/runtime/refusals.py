"""Messages the daemon refuses (a step event from an agent the attempt is not assigned to, a
heartbeat it cannot read), logged at most once per source per interval: a misbehaving or hostile
client cannot flood the log, and the operator still learns who it is and how much was dropped."""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

INTERVAL_S = 60.0


@dataclass(slots=True)
class _Seen:
    logged_at: float
    dropped: int = 0


class Refusals:
    def __init__(self, event: str, *, interval_s: float = INTERVAL_S) -> None:
        self._event = event
        self._interval_s = interval_s
        self._seen: dict[str, _Seen] = {}

    def refuse(self, source: str, reason: str, **fields: object) -> None:
        """Drops a message from ``source`` (an agent's name, a subject): logged now unless one from
        the same source was logged within the interval, in which case it is counted."""
        now = time.monotonic()
        seen = self._seen.get(source)
        if seen is not None and now - seen.logged_at < self._interval_s:
            seen.dropped += 1
            return
        dropped = 0 if seen is None else seen.dropped
        log.warning(self._event, source=source, reason=reason, dropped_since_last=dropped, **fields)
        self._seen[source] = _Seen(now)
        if len(self._seen) > 10_000:  # forget quiet sources, so the map stays small
            self._seen = {
                key: item for key, item in self._seen.items() if now - item.logged_at < self._interval_s
            }
