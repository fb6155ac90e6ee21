"""The nats trigger source against a real NATS server with JetStream (the session's ``nats_url``).

The sink is a real in-test one: it records each event and answers like the daemon would (``run`` the
first time a dedupe key is seen, ``duplicate`` after), so exactly-once is checked the way the
daemon's unique constraint makes it: by counting distinct dedupe keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from kit.backoff import backoff_s
from kit.streams import trigger_durable
from kit.subjects import subject_problem
from triggers.base import EventResult, EventSink, TriggerConfig, TriggerError, TriggerEvent
from triggers.nats import NatsSource
from triggers.nats.events import core_dedupe_key, decode_data, matches, stream_dedupe_key
from triggers.nats.runner import NAK_BASE_DELAY_S, NAK_MAX_DELAY_S
from triggers.specs import NatsSource as NatsSpec

WAIT_S = 15.0


class Sink:
    """Records every call; fails the first ``failures`` calls, and awaits ``gate`` when given."""

    def __init__(self, *, failures: int = 0, gate: asyncio.Event | None = None) -> None:
        self.events: list[TriggerEvent] = []
        self.calls = 0
        self.failures = failures
        self.gate = gate
        self.first: dict[str, TriggerEvent] = {}
        self.call_times: list[float] = []

    async def __call__(self, event: TriggerEvent) -> EventResult:
        self.calls += 1
        self.call_times.append(time.monotonic())
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database unavailable")
        if self.gate is not None:
            await self.gate.wait()
        self.events.append(event)
        duplicate = event.dedupe_key in self.first
        self.first.setdefault(event.dedupe_key, event)
        return EventResult(event_id=len(self.events), outcome="duplicate" if duplicate else "run")

    @property
    def keys(self) -> set[str]:
        return set(self.first)


async def eventually(predicate: Callable[[], bool], within: float = WAIT_S) -> None:
    """Until ``predicate()`` holds, polling every 10 ms; TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


async def save_state(name: str, state: dict[str, Any]) -> None:
    raise AssertionError("the nats source keeps no state in the daemon")


@contextlib.asynccontextmanager
async def running(nc: NATS, sink: EventSink, **options: Any) -> AsyncIterator[NatsSource]:
    source = NatsSource(nc, **{"lag_max_age": 0.2, **options})
    async with contextlib.AsyncExitStack() as stack:
        await source.start(stack, sink, save_state)
        yield source


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url, connect_timeout=5)
    yield client
    await client.drain()


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


def trigger(name: str, **spec: Any) -> TriggerConfig:
    return TriggerConfig(name=name, on=NatsSpec(**spec))


async def make_stream(nc: NATS, name: str, subjects: list[str], **config: Any) -> None:
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=subjects, **config))


# --- pure logic ---------------------------------------------------------------------------------


def test_match_compares_json_values_along_dotted_paths() -> None:
    fields = {
        "subject": "a.b",
        "data": {"kind": "full", "n": 1, "ok": True, "items": [{"id": 7}]},
        "headers": {},
    }
    assert matches(fields, {})
    assert matches(fields, {"data.kind": "full", "subject": "a.b"})
    assert matches(fields, {"data.n": 1.0, "data.items.0.id": 7})
    assert not matches(fields, {"data.n": True})  # JSON true is not 1
    assert not matches(fields, {"data.ok": 1})
    assert not matches(fields, {"data.kind": "partial"})
    assert not matches(fields, {"data.missing": None})
    assert not matches(fields, {"kind": "full"})  # paths start at the event fields
    assert matches({"data": {"x": None}}, {"data.x": None})
    assert not matches({"data": "text"}, {"data.kind": "full"})


def test_payloads_decode_as_json_or_text() -> None:
    assert decode_data(b'{"a": [1, 2]}') == {"a": [1, 2]}
    assert decode_data(b"42") == 42
    assert decode_data(b"hello world") == "hello world"
    assert decode_data(b"") == ""
    assert decode_data(b"\xff ok") == "\ufffd ok"


def test_dedupe_keys_and_backoff() -> None:
    assert stream_dedupe_key({"Nats-Msg-Id": "order-1"}, "S", 5) == "order-1"
    assert stream_dedupe_key(None, "S", 5) == "S:5"
    assert core_dedupe_key({"Nats-Msg-Id": "x"}) == "x"
    assert core_dedupe_key(None) != core_dedupe_key(None)
    delays = [backoff_s(n, base=NAK_BASE_DELAY_S, cap=NAK_MAX_DELAY_S) for n in (1, 2, 3, 7, 100)]
    assert delays == [0.5, 1.0, 2.0, 30.0, 30.0]
    assert trigger_durable("nightly") == "sluice-trigger-nightly"


def test_subject_problems() -> None:
    assert subject_problem("a.*.c") is None
    assert subject_problem("a.>") is None
    assert subject_problem("a..b")
    assert subject_problem("a.>.b")
    assert subject_problem("a.b*")
    assert subject_problem("a b")


# --- core NATS ----------------------------------------------------------------------------------


async def test_core_delivers_event_fields_and_filters_on_match(nc: NATS, uid: str) -> None:
    sink = Sink()
    async with running(nc, sink) as source:
        await source.put(trigger(f"core-{uid}", subject=f"req.{uid}.>", match={"data.kind": "full"}))
        await nc.publish(f"req.{uid}.a", b'{"kind": "full", "n": 1}', headers={"X-Source": "billing"})
        await nc.publish(f"req.{uid}.b", b'{"kind": "partial", "n": 2}')
        await nc.publish(f"req.{uid}.c", b'{"kind": "full", "n": 3}', headers={"Nats-Msg-Id": "m-3"})
        await nc.publish(f"other.{uid}", b'{"kind": "full", "n": 4}')
        await nc.flush()
        await eventually(lambda: len(sink.events) == 2)
        await asyncio.sleep(0.1)
        assert sink.calls == 2
        first, second = sorted(sink.events, key=lambda event: event.fields["data"]["n"])
        assert first.trigger == f"core-{uid}"
        assert first.fields == {
            "subject": f"req.{uid}.a",
            "data": {"kind": "full", "n": 1},
            "headers": {"X-Source": "billing"},
        }
        assert len(first.dedupe_key) == 32  # a fresh uuid4: core NATS never redelivers
        assert second.dedupe_key == "m-3"
        assert second.fields["headers"] == {"Nats-Msg-Id": "m-3"}
        assert source.status(f"core-{uid}") == {
            "subject": f"req.{uid}.>",
            "stream": None,
            "consumer_lag": None,
            "in_flight": 0,
            "error": None,
        }

        await source.remove(f"core-{uid}")
        await nc.publish(f"req.{uid}.a", b'{"kind": "full", "n": 5}')
        await nc.flush()
        await asyncio.sleep(0.2)
        assert len(sink.events) == 2
        assert source.status(f"core-{uid}") == {}


async def test_core_non_json_payload_arrives_as_text(nc: NATS, uid: str) -> None:
    sink = Sink()
    async with running(nc, sink) as source:
        await source.put(trigger(f"text-{uid}", subject=f"text.{uid}"))
        await nc.publish(f"text.{uid}", b"model ready: v7")
        await nc.publish(f"text.{uid}", b"[1, 2]")
        await nc.flush()
        await eventually(lambda: len(sink.events) == 2)
        assert [event.fields["data"] for event in sink.events] == ["model ready: v7", [1, 2]]


async def test_core_retries_a_failing_sink_with_the_same_key(nc: NATS, uid: str) -> None:
    sink = Sink(failures=1)
    async with running(nc, sink) as source:
        await source.put(trigger(f"retry-{uid}", subject=f"retry.{uid}"))
        await nc.publish(f"retry.{uid}", b"{}")
        await eventually(lambda: len(sink.events) == 1)
        assert sink.calls == 2


async def test_core_changed_subject_resubscribes(nc: NATS, uid: str) -> None:
    sink = Sink()
    async with running(nc, sink) as source:
        await source.put(trigger(f"move-{uid}", subject=f"old.{uid}"))
        await source.put(trigger(f"move-{uid}", subject=f"new.{uid}"))
        await nc.publish(f"old.{uid}", b'"old"')
        await nc.publish(f"new.{uid}", b'"new"')
        await eventually(lambda: len(sink.events) == 1)
        await asyncio.sleep(0.1)
        assert [event.fields["data"] for event in sink.events] == ["new"]


async def test_invalid_subject_is_a_trigger_error(nc: NATS, uid: str) -> None:
    async with running(nc, Sink()) as source:
        with pytest.raises(TriggerError, match=f"bad-{uid}"):
            await source.put(trigger(f"bad-{uid}", subject="a..b"))
        assert "bad NATS subject" in source.status(f"bad-{uid}")["error"]
        with pytest.raises(TriggerError, match="bad NATS subject"):  # unchanged, and still unwatchable
            await source.put(trigger(f"bad-{uid}", subject="a..b"))
        await source.remove(f"bad-{uid}")
        assert source.status(f"bad-{uid}") == {}


# --- JetStream ----------------------------------------------------------------------------------


async def test_jetstream_exactly_once_across_two_crashes(nats_url: str, nc: NATS, uid: str) -> None:
    """1,000 messages; the source 'crashes' twice mid-way (connection gone, in-flight messages never
    acked). Every message reaches the sink; the repeats carry the same dedupe key."""
    stream, name, total = f"CRASH_{uid}", f"crash-{uid}", 1000
    await make_stream(nc, stream, [f"crash.{uid}.>"])
    js = nc.jetstream()

    crashed = asyncio.Event()
    crash_at: list[int] = [300, 650]
    seen: list[TriggerEvent] = []
    distinct: dict[str, TriggerEvent] = {}

    async def sink(event: TriggerEvent) -> EventResult:
        seen.append(event)
        duplicate = event.dedupe_key in distinct
        distinct.setdefault(event.dedupe_key, event)
        if crash_at and len(distinct) >= crash_at[0]:
            # This event counts as committed, but the process dies before the ack: block until
            # the connection is gone and the source torn down.
            crash_at.pop(0)
            crashed.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0.002)
        return EventResult(event_id=len(seen), outcome="duplicate" if duplicate else "run")

    async def publish() -> None:
        for n in range(total):
            await js.publish(f"crash.{uid}.item", json.dumps({"n": n}).encode())

    publisher = asyncio.create_task(publish())
    try:
        for _life in range(3):
            crashed.clear()
            client = await nats.connect(nats_url, connect_timeout=5)
            source = NatsSource(client, ack_wait=1.0, stop_grace=0.05)
            stack = contextlib.AsyncExitStack()
            await source.start(stack, sink, save_state)
            await source.put(trigger(name, subject=f"crash.{uid}.>", stream=stream))
            if crash_at:
                async with asyncio.timeout(WAIT_S):
                    await crashed.wait()
                await client.close()  # the crash: nothing more reaches the server
                await stack.aclose()
            else:
                await eventually(lambda: len(distinct) == total, within=30)
                await asyncio.sleep(1.5)  # beyond ack_wait: nothing left to redeliver
                assert source.status(name)["consumer_lag"] == 0
                await stack.aclose()
                await client.close()
        await publisher
    finally:
        publisher.cancel()

    assert len(distinct) == total
    assert sorted(event.fields["data"]["n"] for event in distinct.values()) == list(range(total))
    repeats = [event for event in seen if distinct[event.dedupe_key] is not event]
    assert len(repeats) >= 2  # at least the two events whose ack the crashes lost
    for event in repeats:
        assert event.fields == distinct[event.dedupe_key].fields
    info = await js.consumer_info(stream, trigger_durable(name))
    assert info.num_pending == 0
    assert info.num_ack_pending == 0


async def test_same_msg_id_gives_the_same_key_inside_and_beyond_the_duplicate_window(
    nc: NATS, uid: str
) -> None:
    stream, name = f"DUP_{uid}", f"dup-{uid}"
    await make_stream(nc, stream, [f"dup.{uid}"], duplicate_window=1.0)
    js = nc.jetstream()
    sink = Sink()
    async with running(nc, sink) as source:
        await source.put(trigger(name, subject=f"dup.{uid}", stream=stream))
        first = await js.publish(f"dup.{uid}", b'{"order": 1}', headers={"Nats-Msg-Id": "order-1"})
        again = await js.publish(f"dup.{uid}", b'{"order": 1}', headers={"Nats-Msg-Id": "order-1"})
        assert again.duplicate  # inside the window the stream itself drops it
        await eventually(lambda: len(sink.events) == 1)
        await asyncio.sleep(1.2)
        late = await js.publish(f"dup.{uid}", b'{"order": 1}', headers={"Nats-Msg-Id": "order-1"})
        assert not late.duplicate
        assert late.seq == first.seq + 1
        other = await js.publish(f"dup.{uid}", b'{"order": 2}')
        await eventually(lambda: len(sink.events) == 3)
        assert [event.dedupe_key for event in sink.events] == ["order-1", "order-1", f"{stream}:{other.seq}"]
        assert sink.keys == {"order-1", f"{stream}:{other.seq}"}


async def test_sink_failure_naks_and_the_message_is_acked_after_success(nc: NATS, uid: str) -> None:
    stream, name = f"FAIL_{uid}", f"fail-{uid}"
    await make_stream(nc, stream, [f"fail.{uid}"])
    js = nc.jetstream()
    sink = Sink(failures=2)
    async with running(nc, sink) as source:
        await source.put(trigger(name, subject=f"fail.{uid}", stream=stream))
        ack = await js.publish(f"fail.{uid}", b'{"job": 1}')
        await eventually(lambda: len(sink.events) == 1)
        assert sink.calls == 3
        assert sink.events[0].dedupe_key == f"{stream}:{ack.seq}"
        # nak delays back off: 0.5 s after the first failure, 1 s after the second
        gaps = [later - earlier for earlier, later in zip(sink.call_times, sink.call_times[1:], strict=False)]
        assert gaps[0] >= 0.45
        assert gaps[1] >= 0.95
        await eventually(lambda: _acked(source, name))
        info = await settled(js, stream, trigger_durable(name))
        assert info.num_redelivered == 0  # redeliveries are counted only while unacked
        assert info.ack_floor.stream_seq == ack.seq


async def settled(js, stream: str, durable: str, within: float = WAIT_S):
    """The consumer's info once the server counts nothing pending or unacked: an ack is published
    without waiting for the server, so the source may know it acked before the server has seen it."""
    async with asyncio.timeout(within):
        while True:
            info = await js.consumer_info(stream, durable)
            if info.num_ack_pending == 0 and info.num_pending == 0:
                return info
            await asyncio.sleep(0.01)


def _acked(source: NatsSource, name: str) -> bool:
    status = source.status(name)
    return status["consumer_lag"] == 0 and status["ack_pending"] == 0


async def test_missing_stream_is_a_trigger_error_and_is_never_created(nc: NATS, uid: str) -> None:
    stream, name = f"MISSING_{uid}", f"missing-{uid}"
    js = nc.jetstream()
    sink = Sink()
    async with running(nc, sink) as source:
        with pytest.raises(TriggerError) as raised:
            await source.put(trigger(name, subject=f"missing.{uid}", stream=stream))
        assert stream in str(raised.value)
        assert name in str(raised.value)
        assert "does not exist" in str(raised.value)
        status = source.status(name)
        assert stream in status["error"]
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info(stream)

        # The source keeps trying: once the user creates the stream, the trigger starts.
        await make_stream(nc, stream, [f"missing.{uid}"])
        await js.publish(f"missing.{uid}", b'{"late": true}')
        await eventually(lambda: len(sink.events) == 1)
        assert source.status(name)["error"] is None


async def test_remove_then_put_resumes_without_losing_messages(nc: NATS, uid: str) -> None:
    stream, name = f"PAUSE_{uid}", f"pause-{uid}"
    await make_stream(nc, stream, [f"pause.{uid}"])
    js = nc.jetstream()
    sink = Sink()
    spec = trigger(name, subject=f"pause.{uid}", stream=stream)
    async with running(nc, sink) as source:
        await source.put(spec)
        for n in range(10):
            await js.publish(f"pause.{uid}", json.dumps({"n": n}).encode())
        await eventually(lambda: len(sink.events) == 10)

        await source.remove(name)
        for n in range(10, 30):
            await js.publish(f"pause.{uid}", json.dumps({"n": n}).encode())
        await asyncio.sleep(0.3)
        assert len(sink.events) == 10
        info = await js.consumer_info(stream, trigger_durable(name))  # pausing keeps the consumer
        assert info.num_pending == 20
        assert info.num_ack_pending == 0  # nothing went to the ended pull request

        await source.put(spec)
        await eventually(lambda: len(sink.events) == 30)
        assert sorted(event.fields["data"]["n"] for event in sink.events) == list(range(30))
        assert len(sink.keys) == 30


async def test_pause_with_sink_calls_running_redelivers_them_on_resume(nc: NATS, uid: str) -> None:
    stream, name = f"INFL_{uid}", f"inflight-{uid}"
    await make_stream(nc, stream, [f"inflight.{uid}"])
    js = nc.jetstream()
    gate = asyncio.Event()
    sink = Sink(gate=gate)
    spec = trigger(name, subject=f"inflight.{uid}", stream=stream)
    async with running(nc, sink, max_in_flight=4, stop_grace=0.05) as source:
        await source.put(spec)
        for n in range(6):
            await js.publish(f"inflight.{uid}", json.dumps({"n": n}).encode())
        await eventually(lambda: sink.calls == 4)
        await source.remove(name)  # the 4 sink calls are cancelled and their messages nak'ed
        gate.set()
        started = time.monotonic()
        await source.put(spec)
        await eventually(lambda: len(sink.keys) == 6)
        assert time.monotonic() - started < 5.0  # well before ack_wait (30 s)


async def test_consumer_lag_in_status(nc: NATS, uid: str) -> None:
    stream, name = f"LAG_{uid}", f"lag-{uid}"
    await make_stream(nc, stream, [f"lag.{uid}"])
    js = nc.jetstream()
    gate = asyncio.Event()
    sink = Sink(gate=gate)
    async with running(nc, sink, max_in_flight=4) as source:
        await source.put(trigger(name, subject=f"lag.{uid}", stream=stream))
        assert source.status(name)["consumer_lag"] == 0
        for n in range(20):
            await js.publish(f"lag.{uid}", json.dumps({"n": n}).encode())
        await eventually(lambda: source.status(name)["consumer_lag"] == 16)
        assert source.status(name) | {"consumer_lag": None} == {
            "subject": f"lag.{uid}",
            "stream": stream,
            "consumer_lag": None,
            "ack_pending": source.status(name)["ack_pending"],
            "in_flight": 4,
            "error": None,
        }
        gate.set()
        await eventually(lambda: len(sink.events) == 20)
        await eventually(lambda: _acked(source, name))


async def test_changed_match_keeps_the_position_and_changed_subject_updates_the_filter(
    nc: NATS, uid: str
) -> None:
    stream, name = f"CHG_{uid}", f"chg-{uid}"
    await make_stream(nc, stream, [f"chg.{uid}.>"])
    js = nc.jetstream()
    sink = Sink()
    async with running(nc, sink) as source:
        await source.put(trigger(name, subject=f"chg.{uid}.a", stream=stream, match={"data.kind": "x"}))
        await js.publish(f"chg.{uid}.a", b'{"kind": "x", "n": 1}')
        await js.publish(f"chg.{uid}.a", b'{"kind": "y", "n": 2}')  # filtered out, acked
        await eventually(lambda: len(sink.events) == 1)
        await eventually(lambda: _acked(source, name))

        await source.put(trigger(name, subject=f"chg.{uid}.a", stream=stream, match={"data.kind": "y"}))
        await js.publish(f"chg.{uid}.a", b'{"kind": "y", "n": 3}')
        await eventually(lambda: len(sink.events) == 2)
        await asyncio.sleep(0.2)
        assert [event.fields["data"]["n"] for event in sink.events] == [1, 3]  # n=2 is not replayed

        await source.put(trigger(name, subject=f"chg.{uid}.b", stream=stream))
        info = await js.consumer_info(stream, trigger_durable(name))
        assert info.config.filter_subject == f"chg.{uid}.b"
        await js.publish(f"chg.{uid}.a", b'{"kind": "y", "n": 4}')
        await js.publish(f"chg.{uid}.b", b'{"kind": "z", "n": 5}')
        await eventually(lambda: len(sink.events) == 3)
        assert sink.events[-1].fields["subject"] == f"chg.{uid}.b"

        await source.put(trigger(name, subject=f"chg.{uid}.b", stream=stream))  # unchanged: no-op
        assert source.status(name)["error"] is None


async def test_delete_consumer_forgets_a_deleted_trigger(nc: NATS, uid: str) -> None:
    stream, name = f"DEL_{uid}", f"del-{uid}"
    await make_stream(nc, stream, [f"del.{uid}"])
    js = nc.jetstream()
    async with running(nc, Sink()) as source:
        await source.put(trigger(name, subject=f"del.{uid}", stream=stream))
        await js.consumer_info(stream, trigger_durable(name))
        await source.delete_consumer(name, stream)
        assert source.status(name) == {}
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.consumer_info(stream, trigger_durable(name))
        await source.delete_consumer(name, stream)  # already gone: fine


async def test_forget_deletes_the_consumer_while_remove_keeps_it(nc: NATS, uid: str) -> None:
    stream, paused, deleted = f"FGT_{uid}", f"paused-{uid}", f"deleted-{uid}"
    await make_stream(nc, stream, [f"fgt.{uid}.*"])
    js = nc.jetstream()
    async with running(nc, Sink()) as source:
        for name in (paused, deleted):
            await source.put(trigger(name, subject=f"fgt.{uid}.{name}", stream=stream))
        await source.remove(paused)
        await source.forget(deleted, trigger(deleted, subject=f"fgt.{uid}.{deleted}", stream=stream).on)
        await js.consumer_info(stream, trigger_durable(paused))
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.consumer_info(stream, trigger_durable(deleted))


async def test_a_stream_deleted_under_a_running_trigger_shows_and_recovers(nc: NATS, uid: str) -> None:
    stream, name = f"GONE_{uid}", f"gone-{uid}"
    await make_stream(nc, stream, [f"gone.{uid}"])
    js = nc.jetstream()
    sink = Sink()
    async with running(nc, sink) as source:
        await source.put(trigger(name, subject=f"gone.{uid}", stream=stream))
        await js.publish(f"gone.{uid}", b'{"n": 1}')
        await eventually(lambda: len(sink.events) == 1)

        await js.delete_stream(stream)
        await eventually(lambda: source.status(name)["error"] is not None)
        assert stream in source.status(name)["error"]

        await make_stream(nc, stream, [f"gone.{uid}"])
        await js.publish(f"gone.{uid}", b'{"n": 2}')
        await eventually(lambda: len(sink.events) == 2)
        assert source.status(name)["error"] is None


async def test_a_sink_call_longer_than_ack_wait_is_not_redelivered(nc: NATS, uid: str) -> None:
    stream, name = f"SLOW_{uid}", f"slow-{uid}"
    await make_stream(nc, stream, [f"slow.{uid}"])
    js = nc.jetstream()
    calls, returned = 0, 0

    async def slow_sink(event: TriggerEvent) -> EventResult:
        nonlocal calls, returned
        calls += 1
        await asyncio.sleep(2.5)  # 2.5 × ack_wait
        returned += 1
        return EventResult(event_id=calls, outcome="run")

    async with running(nc, slow_sink, ack_wait=1.0) as source:
        await source.put(trigger(name, subject=f"slow.{uid}", stream=stream))
        await js.publish(f"slow.{uid}", b"{}")
        await eventually(lambda: returned == 1, within=10)
        await asyncio.sleep(1.5)
        assert calls == 1  # in-progress acks kept JetStream from redelivering it meanwhile
        info = await js.consumer_info(stream, trigger_durable(name))
        assert info.num_ack_pending == 0
        assert info.num_redelivered == 0
