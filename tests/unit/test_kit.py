"""The shared kit's pure parts and its loops: backoff, supervision, offering until committed."""

from __future__ import annotations

import asyncio

import pytest

from kit.backoff import Backoff, backoff_s
from kit.offer import offer_until_committed
from kit.supervise import describe, supervise


def test_backoff_doubles_from_base_up_to_cap() -> None:
    assert [backoff_s(n, base=0.5, cap=30.0) for n in (1, 2, 3, 7, 100)] == [0.5, 1.0, 2.0, 30.0, 30.0]
    delays = Backoff(1.0, 4.0)
    assert [delays.next() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    delays.reset()
    assert delays.next() == 1.0


def test_describe_unwraps_task_group_errors() -> None:
    assert describe(ExceptionGroup("g", [ValueError("bad")])) == "bad"
    assert describe(ExceptionGroup("g", [ValueError("a"), KeyError("b")])) == "a; 'b'"
    assert describe(TimeoutError()) == "TimeoutError"


async def test_supervise_restarts_a_crashed_loop_until_it_returns() -> None:
    runs: list[int] = []
    crashes: list[str] = []

    async def body() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"crash {len(runs)}")

    await supervise(
        body,
        name="t",
        crashed="t_crashed",
        delays=Backoff(0.001, 0.01),
        on_crash=lambda e: crashes.append(str(e)),
    )
    assert runs == [0, 1, 2]
    assert crashes == ["crash 1", "crash 2"]


async def test_supervise_restarts_a_returning_loop_when_told_and_stops_when_stopping() -> None:
    runs: list[int] = []

    async def body() -> None:
        runs.append(1)

    await supervise(
        body,
        name="t",
        crashed="t_crashed",
        returned="t_returned",
        delays=Backoff(0.001, 0.001),
        stopping=lambda: len(runs) >= 3,
    )
    assert len(runs) == 3


async def test_supervise_passes_cancellation_through() -> None:
    started = asyncio.Event()

    async def body() -> None:
        started.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(supervise(body, name="t", crashed="t_crashed", delays=Backoff(0.001, 0.01)))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_offer_until_committed_retries_then_returns_the_result() -> None:
    failures = [ConnectionError("down"), ConnectionError("down")]

    async def offer() -> str:
        if failures:
            raise failures.pop()
        return "committed"

    assert await offer_until_committed(offer, failed="t_failed", base=0.001, cap=0.01) == "committed"


async def test_offer_until_committed_gives_up_after_attempts_or_when_closed() -> None:
    calls: list[int] = []

    async def offer() -> str:
        calls.append(1)
        raise ConnectionError(f"down {len(calls)}")

    with pytest.raises(ConnectionError, match="down 3"):
        await offer_until_committed(offer, failed="t_failed", base=0.001, cap=0.01, attempts=3)
    calls.clear()
    closed = await offer_until_committed(
        offer, failed="t_failed", base=0.001, cap=0.01, closed=lambda: len(calls) >= 2
    )
    assert (closed, len(calls)) == (None, 2)


async def test_offer_until_committed_lets_other_errors_through() -> None:
    async def offer() -> str:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await offer_until_committed(offer, failed="t_failed", base=0.001, cap=0.01, errors=(ConnectionError,))
