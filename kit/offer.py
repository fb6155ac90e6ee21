"""Offering a value until its receiver commits it: a sink that records a trigger's event, a JetStream
stream that stores a step event. Each failed try is logged and waited for with bounded backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from kit.backoff import backoff_s
from kit.supervise import describe, never

log = structlog.get_logger(__name__)

T = TypeVar("T")


async def offer_until_committed(
    offer: Callable[[], Awaitable[T]],
    *,
    failed: str,
    base: float,
    cap: float,
    attempts: int | None = None,
    closed: Callable[[], bool] = never,
    errors: tuple[type[Exception], ...] = (Exception,),
    **fields: Any,
) -> T | None:
    """``await offer()`` until it returns, and return what it returned; None once ``closed()``
    (checked before each try). A try that raises one of ``errors`` is logged as ``failed`` with
    ``fields``, ``tries`` (so far: ``attempt`` is a step attempt's id in Sluice's logs), ``retry_in``
    and ``error`` (a warning; an error once the wait is at ``cap``: it keeps failing), then tried
    again after ``backoff_s(tries, base, cap)``. With ``attempts``, the last try's error is raised
    instead of being logged (the caller gives up)."""
    tries = 0
    while not closed():
        tries += 1
        try:
            return await offer()
        except errors as exc:
            if attempts is not None and tries >= attempts:
                raise
            delay = backoff_s(tries, base=base, cap=cap)
            report = log.error if delay >= cap else log.warning
            report(failed, tries=tries, retry_in=delay, error=describe(exc), **fields)
            await asyncio.sleep(delay)
    return None
