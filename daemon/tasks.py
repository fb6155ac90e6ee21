"""Owned background work: supervised loops that restart after a crash, and sets of short tasks that
are awaited (and cancelled) by their owner at shutdown. Nothing here is fire-and-forget."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)

RESTART_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)
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
    """Long-running loops that must not die silently: a loop that raises is logged with its error
    (kept in a short history for inspection), then restarted after a growing, bounded delay."""

    def __init__(self) -> None:
        self._tasks = TaskSet("supervisor")
        self.errors: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=50)

    def start(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        self._tasks.spawn(self._supervise(name, loop), name=name)

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await loop()
                log.warning("loop_returned", loop=name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors.append((time.time(), name, repr(exc)))
                log.exception("loop_crashed", loop=name)
            # A loop that ran for a while before failing starts over with the shortest delay.
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            await asyncio.sleep(RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)])

    async def aclose(self) -> None:
        await self._tasks.aclose()
