"""Supervision of long-lived loops: a loop that fails is logged with its context, waited for with
bounded backoff, and restarted; it is never lost, and a cancellation always goes through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import structlog

from kit.backoff import Backoff

log = structlog.get_logger(__name__)


def describe(exc: BaseException) -> str:
    """One line for an error, unwrapping the exception groups of task groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in exc.exceptions)
    return str(exc) or type(exc).__name__


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that an await swallowed: Python 3.11's ``asyncio.wait_for`` (inside
    nats-py's requests, for one) returns the result when it races a ``cancel()``. Loops call this
    each turn."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def never() -> bool:
    """The default of a stop condition: not stopping."""
    return False


async def supervise(
    body: Callable[[], Coroutine[Any, Any, object]],
    *,
    name: str,
    crashed: str,
    delays: Backoff,
    fresh_after_s: float | None = None,
    context: Callable[[], Mapping[str, Any]] | None = None,
    on_crash: Callable[[Exception], object] | None = None,
    traceback: bool = True,
    returned: str | None = None,
    stopping: Callable[[], bool] = never,
) -> None:
    """Run ``body()`` (in a task named ``name``) until ``stopping()``; each time it raises, log
    ``crashed`` (with ``error``, ``retry_in`` and the fields ``context()`` gives at that moment; the
    traceback unless ``traceback`` is false), call ``on_crash(exc)`` (record the error, reset state),
    wait ``delays.next()`` and run it again. A run that lasted ``fresh_after_s`` starts the delays
    over. When ``body`` returns, so does this, unless ``returned`` names the warning to log before
    restarting it (a loop that must never end). Cancellation is never swallowed.
    """
    while not stopping():
        raise_if_cancelled()
        began = time.monotonic()
        # A task of its own: on Python 3.11 a task group whose child failed leaves its parent task's
        # cancel count raised, which would read as a cancellation here ever after.
        run = asyncio.create_task(body(), name=name)
        failure: Exception | None = None
        try:
            await run
        except Exception as exc:
            failure = exc
        raise_if_cancelled()
        if stopping() or (failure is None and returned is None):
            return
        if fresh_after_s is not None and time.monotonic() - began > fresh_after_s:
            delays.reset()
        delay = delays.next()
        fields = dict(context() if context is not None else {})
        if failure is None:
            log.warning(returned, retry_in=delay, **fields)
        else:
            report = log.exception if traceback else log.warning
            report(crashed, error=describe(failure), retry_in=delay, **fields)
            if on_crash is not None:
                on_crash(failure)
        await asyncio.sleep(delay)
