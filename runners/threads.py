"""Blocking calls that may take as long as a step (following a container's logs, waiting for it to
exit) run on threads of their own rather than on the event loop's shared pool, which a few long
waits would exhaust; results come back to the loop through ``call_soon_threadsafe``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_thread(function: Callable[[], T], *, name: str) -> asyncio.Future[T]:
    """Run ``function`` on a new daemon thread; the future resolves with its result or exception.

    Cancelling the future does not stop the thread: make the call return (stop the container) instead.
    Daemon threads so that a call that never returns cannot keep the process alive at exit.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting side, not swallowed
            call_soon(loop, settle, None, exc)
        else:
            call_soon(loop, settle, result, None)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    """``loop.call_soon_threadsafe`` that ignores a loop already closed (the agent has exited)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
