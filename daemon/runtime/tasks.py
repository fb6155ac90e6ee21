"""The daemon's supervised loops: each restarts after a crash (``kit.supervise``), with a short
history of its errors; they stop with their owner (``kit.tasks``)."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from kit.backoff import Backoff
from kit.supervise import supervise
from kit.tasks import TaskSet

log = structlog.get_logger(__name__)

RESTART_BASE_S = 0.5
RESTART_CAP_S = 5.0
FRESH_AFTER_S = 60.0
"""A loop that ran this long before failing starts over with the shortest delay."""


class Supervisor:
    """Long-running loops that must not die silently: a loop that raises (or returns) is logged with
    its error (kept in a short history for inspection), then restarted after a growing, bounded delay
    (``kit.supervise``)."""

    def __init__(self) -> None:
        self._tasks = TaskSet("supervisor")
        self.errors: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=50)

    def start(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        def remember(exc: Exception) -> None:
            self.errors.append((time.time(), name, repr(exc)))

        delays = Backoff(RESTART_BASE_S, RESTART_CAP_S)
        self._tasks.spawn(
            supervise(
                loop,
                name=name,
                crashed="loop_crashed",
                returned="loop_returned",
                delays=delays,
                fresh_after_s=FRESH_AFTER_S,
                context=lambda: {"loop": name},
                on_crash=remember,
            ),
            name=name,
        )

    async def aclose(self) -> None:
        await self._tasks.aclose()
