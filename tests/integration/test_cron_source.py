"""The cron source on a real event loop, with real time and an in-test sink that commits to a list."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from triggers.base import EventResult, TriggerConfig, TriggerError, TriggerEvent
from triggers.cron import CronSource
from triggers.specs import CronSource as CronSpec
from triggers.specs import FilesSource


class Daemon:
    """What the daemon would be to the source: a sink that records (and may fail), and a state store."""

    def __init__(self) -> None:
        self.events: list[TriggerEvent] = []
        self.calls: list[tuple[float, TriggerEvent]] = []
        self.states: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, int] = {}  # trigger -> sink calls still to fail
        self.delay: dict[str, float] = {}  # trigger -> seconds each sink call takes
        self.hangs: dict[str, int] = {}  # trigger -> sink calls still to hang (until cancelled)

    async def sink(self, event: TriggerEvent) -> EventResult:
        self.calls.append((time.time(), event))
        if self.failures.get(event.trigger, 0) > 0:
            self.failures[event.trigger] -= 1
            raise ConnectionError("database went away")
        if self.hangs.get(event.trigger, 0) > 0:
            self.hangs[event.trigger] -= 1
            await asyncio.Event().wait()
        if delay := self.delay.get(event.trigger):
            await asyncio.sleep(delay)
        self.events.append(event)
        return EventResult(event_id=len(self.events), outcome="run", run_id=f"run-{len(self.events)}")

    async def save_state(self, name: str, state: dict[str, Any]) -> None:
        self.states[name] = state

    def keys(self, trigger: str) -> list[str]:
        return [event.dedupe_key for event in self.events if event.trigger == trigger]


@pytest.fixture
def daemon() -> Daemon:
    return Daemon()


@pytest.fixture
async def source(daemon: Daemon) -> AsyncIterator[CronSource]:
    source = CronSource()
    async with contextlib.AsyncExitStack() as stack:
        await source.start(stack, daemon.sink, daemon.save_state)
        yield source


def cron(
    name: str, expr: str, *, timezone: str = "UTC", catchup: str = "latest", **state: Any
) -> TriggerConfig:
    return TriggerConfig(
        name=name,
        on=CronSpec(cron=expr, timezone=timezone, catchup=catchup),  # type: ignore[arg-type]
        state=state,
    )


async def eventually(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110 - there is nothing to wait on but the condition
            await asyncio.sleep(0.02)


async def mid_second() -> datetime:
    """Now, 0.2 s past a whole second, so that "the fires up to now" cannot shift."""
    await asyncio.sleep((1.2 - time.time() % 1) % 1)
    return datetime.now(UTC)


def instant(key: str) -> datetime:
    return datetime.fromisoformat(key)


async def test_every_second_fires_each_second_with_its_keys(source: CronSource, daemon: Daemon) -> None:
    await source.put(cron("tick", "* * * * * *", timezone="Europe/Madrid"))
    await eventually(lambda: len(daemon.keys("tick")) >= 3)
    keys = daemon.keys("tick")
    seconds = [instant(key) for key in keys]
    assert all(later - earlier == timedelta(seconds=1) for earlier, later in itertools.pairwise(seconds))
    assert all(key.endswith("+00:00") and instant(key).microsecond == 0 for key in keys)
    for called, event in daemon.calls:
        assert 0 <= called - instant(event.dedupe_key).timestamp() < 0.1  # sink called on time
        local = datetime.fromisoformat(event.fields["scheduled_time"])
        assert local == instant(event.dedupe_key)
        assert local.utcoffset() in {timedelta(hours=1), timedelta(hours=2)}
        assert event.fields["scheduled_date"] == local.date().isoformat()
    status = source.status("tick")
    assert instant(status["next_fire"]) > instant(keys[-1])
    assert status["last_fire"] in keys
    await eventually(lambda: daemon.states.get("tick", {}).get("last_fire") in keys[2:])


@pytest.mark.parametrize(("catchup", "expected"), [("none", 0), ("latest", 1), ("all", 5)])
async def test_catchup_after_five_seconds_down(
    source: CronSource, daemon: Daemon, catchup: str, expected: int
) -> None:
    now = await mid_second()
    last_fire = now.replace(microsecond=0) - timedelta(seconds=5)
    await source.put(cron("gap", "* * * * * *", catchup=catchup, last_fire=last_fire.isoformat()))
    await asyncio.sleep(0.2)  # the catch-up goes out at once, before the next live fire
    missed = [key for key in daemon.keys("gap") if instant(key) <= now]
    assert len(missed) == expected
    assert missed == sorted(missed)
    if expected:
        assert instant(missed[-1]) == now.replace(microsecond=0)  # the newest missed one is always there
    await eventually(lambda: any(instant(key) > now for key in daemon.keys("gap")))  # then live again
    keys = daemon.keys("gap")
    assert len(set(keys)) == len(keys)


async def test_first_put_without_state_starts_from_now(source: CronSource, daemon: Daemon) -> None:
    now = await mid_second()
    await source.put(cron("fresh", "* * * * * *", catchup="all"))
    await eventually(lambda: len(daemon.keys("fresh")) >= 1)
    assert all(instant(key) > now for key in daemon.keys("fresh"))


async def test_put_of_a_changed_spec_replans(source: CronSource, daemon: Daemon) -> None:
    await source.put(cron("change", "* * * * * *"))
    await eventually(lambda: len(daemon.keys("change")) >= 1)
    before = source.status("change")["next_fire"]
    await source.put(cron("change", "* * * * * *"))  # unchanged: nothing moves
    assert source.status("change")["next_fire"] == before
    await source.put(cron("change", "*/3 * * * * *"))
    changed_at = datetime.now(UTC)
    assert instant(source.status("change")["next_fire"]).second % 3 == 0
    await eventually(
        lambda: len([k for k in daemon.keys("change") if instant(k) > changed_at]) >= 2, within_s=8
    )
    later = [instant(key) for key in daemon.keys("change") if instant(key) > changed_at]
    assert all(fire.second % 3 == 0 for fire in later)


async def test_remove_stops_the_fires(source: CronSource, daemon: Daemon) -> None:
    await source.put(cron("gone", "* * * * * *"))
    await eventually(lambda: len(daemon.keys("gone")) >= 1)
    await source.remove("gone")
    removed_at = time.time()
    assert source.status("gone") == {}
    await asyncio.sleep(1.5)
    assert all(called <= removed_at for called, event in daemon.calls if event.trigger == "gone")
    await source.remove("gone")  # unknown names are ignored


async def test_a_failing_sink_delivers_the_fire_once(source: CronSource, daemon: Daemon) -> None:
    daemon.failures["flaky"] = 2
    await source.put(cron("flaky", "* * * * * *"))
    await eventually(lambda: len(daemon.keys("flaky")) >= 2)
    first = daemon.keys("flaky")[0]
    offers = [event.dedupe_key for _, event in daemon.calls if event.trigger == "flaky"]
    assert offers[:3] == [first] * 3  # failed twice, then committed
    keys = daemon.keys("flaky")
    assert keys == sorted(set(keys))  # once each, in order
    await eventually(lambda: daemon.states.get("flaky", {}).get("last_fire", "") >= first)


async def test_a_sink_call_that_hangs_is_cut_off_and_offered_again(daemon: Daemon) -> None:
    daemon.hangs["stuck"] = 1
    source = CronSource(sink_timeout_s=0.5)
    async with contextlib.AsyncExitStack() as stack:
        await source.start(stack, daemon.sink, daemon.save_state)
        await source.put(cron("stuck", "* * * * * *"))
        await eventually(lambda: len(daemon.keys("stuck")) >= 2, within_s=6)
    offers = [event.dedupe_key for _, event in daemon.calls if event.trigger == "stuck"]
    keys = daemon.keys("stuck")
    assert offers[0] == offers[1] == keys[0]  # the hung call, then the retry that committed
    assert keys == sorted(set(keys))


async def test_a_slow_commit_does_not_delay_other_triggers(source: CronSource, daemon: Daemon) -> None:
    daemon.delay["slow"] = 2.5
    await source.put(cron("slow", "* * * * * *"))
    await source.put(cron("quick", "* * * * * *"))
    await eventually(lambda: len(daemon.keys("quick")) >= 3)
    quick = [(called, event) for called, event in daemon.calls if event.trigger == "quick"]
    assert all(called - instant(event.dedupe_key).timestamp() < 0.1 for called, event in quick)
    slow = [event.dedupe_key for _, event in daemon.calls if event.trigger == "slow"]
    assert len(slow) == len(set(slow)) <= 2  # one commit at a time per trigger, in order


async def test_a_bad_spec_is_refused(source: CronSource) -> None:
    with pytest.raises(TriggerError, match="bad"):
        await source.put(cron("bad", "0 2 * * *", timezone="Mars/Olympus"))
    with pytest.raises(TriggerError, match="bad"):
        await source.put(TriggerConfig(name="bad", on=FilesSource(datastore="d", pattern="*")))
    assert source.status("bad") == {}


async def test_teardown_leaves_no_sink_call_in_flight(daemon: Daemon) -> None:
    daemon.delay["busy"] = 30.0
    source = CronSource()
    async with contextlib.AsyncExitStack() as stack:
        await source.start(stack, daemon.sink, daemon.save_state)
        await source.put(cron("busy", "* * * * * *"))
        await eventually(lambda: len(daemon.calls) >= 1)
    calls = len(daemon.calls)
    await asyncio.sleep(1.2)
    assert len(daemon.calls) == calls
    assert daemon.events == []  # the commit in flight was cancelled: the watermark did not move
    assert "busy" not in daemon.states
