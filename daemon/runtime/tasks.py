"""Owned background work: supervised loops that restart after a crash (``kit.supervise``), and sets
of short tasks that are awaited (and cancelled) by their owner at shutdown. Nothing here is
fire-and-forget."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from kit.backoff import Backoff
from kit.supervise import supervise

log = structlog.get_logger(__name__)

RESTART_BASE_S = 0.5
RESTART_CAP_S = 5.0
FRESH_AFTER_S = 60.0
"""A loop that ran this long before failing starts over with the shortest delay."""
STOP_TIMEOUT_S = 5.0


class TaskSet:
    """Tasks with one owner: each is named, its failure is logged, and :meth:`aclose` cancels and
    awaits whatever is still running (bounded by ``STOP_TIMEOUT_S``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task:
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.name} is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task_failed", owner=self.name, task=task.get_name(), error=repr(exc), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        self._closed = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            if pending:
                log.warning("tasks_not_stopped", owner=self.name, count=len(pending))


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
