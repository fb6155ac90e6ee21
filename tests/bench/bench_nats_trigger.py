"""Event ingestion at the nats source: messages in, sink-committed events out.

Everything runs in this process against an embedded NATS server with JetStream. The sink stands in
for the daemon's commit: it awaits ``--sink-ms`` (``asyncio.sleep``, so at least one event-loop
tick, ~1 ms on Linux's millisecond epoll timeout; the measured time is reported) and returns.

1. throughput: ``--messages`` JetStream messages → sink-committed (then acked) events per second.
   ``backlog``: the messages are on the stream before the trigger starts; ``live``: a publisher on
   its own connection publishes them as fast as JetStream acks while the trigger consumes. Both with
   the default window (64 sink calls in flight) and with a window of 1 (one message at a time).
2. latency: at a low rate (``--rate`` messages/s, ``--samples`` messages), from just before the
   publish call to the sink being called: core NATS (``nc.publish``) and JetStream (``js.publish``).

Run: .venv/bin/python tests/bench/bench_nats_trigger.py [--messages 20000] [--sink-ms 0.5]
     [--rate 50] [--samples 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[2]))

import msgspec
import nats
from nats.aio.client import Client as NATS

from daemon.runtime.embedded import EmbeddedNats
from kit.logsetup import configure_logging
from tests.bench.harness import report, temp_dir
from triggers.base import EventResult, TriggerConfig, TriggerEvent
from triggers.nats import NatsSource
from triggers.nats.source import MAX_IN_FLIGHT
from triggers.specs import NatsSource as NatsSpec


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1e3, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 3),
        "max_ms": round(ordered[-1] * 1e3, 3),
    }


async def no_state(name: str, state: dict[str, Any]) -> None:
    return None


@contextlib.asynccontextmanager
async def source_running(nc: NATS, sink: Callable[[TriggerEvent], Awaitable[EventResult]], **options: Any):
    source = NatsSource(nc, **options)
    async with contextlib.AsyncExitStack() as stack:
        await source.start(stack, sink, no_state)
        yield source


class CountingSink:
    """Awaits ``delay`` like a commit, counts distinct keys, and sets ``done`` at ``expected``."""

    def __init__(self, expected: int, delay: float) -> None:
        self.expected = expected
        self.delay = delay
        self.keys: set[str] = set()
        self.durations: list[float] = []
        self.done = asyncio.Event()
        self.last_at = 0.0

    async def __call__(self, event: TriggerEvent) -> EventResult:
        started = time.perf_counter()
        await asyncio.sleep(self.delay)
        self.durations.append(time.perf_counter() - started)
        self.keys.add(event.dedupe_key)
        if len(self.keys) >= self.expected:
            self.last_at = time.perf_counter()
            self.done.set()
        return EventResult(event_id=len(self.keys), outcome="run")


async def throughput(
    url: str, nc: NATS, *, label: str, messages: int, sink_ms: float, window: int, live: bool
) -> dict[str, Any]:
    stream = f"BENCH_{label.upper()}"
    subject = f"bench.{label}"
    js = nc.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(stream)
    await js.add_stream(name=stream, subjects=[subject])
    payload = msgspec.json.encode({"kind": "score", "date": "2025-01-01", "customer": 12345})

    async def publish() -> float:
        publisher = await nats.connect(url)
        try:
            pjs = publisher.jetstream()
            started = time.perf_counter()
            for _ in range(messages // 100):
                await asyncio.gather(*(pjs.publish(subject, payload) for _ in range(100)))
            return time.perf_counter() - started
        finally:
            await publisher.close()

    publish_s = None
    if not live:
        publish_s = await publish()
    sink = CountingSink(messages, sink_ms / 1e3)
    async with source_running(nc, sink, max_in_flight=window) as source:
        started = time.perf_counter()
        await source.put(TriggerConfig(name=f"bench-{label}", on=NatsSpec(subject=subject, stream=stream)))
        publisher = asyncio.create_task(publish()) if live else None
        async with asyncio.timeout(600):
            await sink.done.wait()
        elapsed = sink.last_at - started
        if publisher is not None:
            publish_s = await publisher
    info = await js.consumer_info(stream, f"sluice-trigger-bench-{label}")
    await js.delete_stream(stream)
    return {
        "mode": "live" if live else "backlog",
        "window": window,
        "messages": messages,
        "events": len(sink.keys),
        "seconds": round(elapsed, 3),
        "events_per_s": round(len(sink.keys) / elapsed),
        "publish_per_s": round(messages / publish_s) if publish_s else None,
        "sink_ms_mean": round(statistics.fmean(sink.durations) * 1e3, 3),
        "unacked_after": info.num_ack_pending + info.num_pending,
    }


async def latency(url: str, nc: NATS, *, jetstream: bool, rate: float, samples: int) -> dict[str, Any]:
    label = "js" if jetstream else "core"
    subject = f"latency.{label}"
    stream = "BENCH_LATENCY" if jetstream else None
    js = nc.jetstream()
    if jetstream:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream("BENCH_LATENCY")
        await js.add_stream(name="BENCH_LATENCY", subjects=[subject])
    sent: dict[int, float] = {}
    delays: list[float] = []
    done = asyncio.Event()

    async def sink(event: TriggerEvent) -> EventResult:
        delays.append(time.perf_counter() - sent[event.fields["data"]["n"]])
        if len(delays) >= samples:
            done.set()
        return EventResult(event_id=len(delays), outcome="run")

    publisher = await nats.connect(url)
    try:
        pjs = publisher.jetstream()
        async with source_running(nc, sink) as source:
            await source.put(
                TriggerConfig(name=f"latency-{label}", on=NatsSpec(subject=subject, stream=stream))
            )
            for n in range(samples):
                data = msgspec.json.encode({"n": n})
                sent[n] = time.perf_counter()
                if jetstream:
                    await pjs.publish(subject, data)
                else:
                    await publisher.publish(subject, data)
                    await publisher.flush()
                await asyncio.sleep(1 / rate)
            async with asyncio.timeout(30):
                await done.wait()
    finally:
        await publisher.close()
    if jetstream:
        await js.delete_stream("BENCH_LATENCY")
    return {"source": "jetstream" if jetstream else "core", "rate_per_s": rate, **percentiles(delays)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = EmbeddedNats(temp_dir() / "nats")
    url = await asyncio.to_thread(server.start)
    nc = await nats.connect(url)
    try:
        runs = []
        for live in (False, True):
            for window in (MAX_IN_FLIGHT, 1):
                label = f"{'live' if live else 'backlog'}{window}"
                messages = args.messages if window > 1 else min(args.messages, 2000)
                runs.append(
                    await throughput(
                        url,
                        nc,
                        label=label,
                        messages=messages,
                        sink_ms=args.sink_ms,
                        window=window,
                        live=live,
                    )
                )
        latencies = [
            await latency(url, nc, jetstream=False, rate=args.rate, samples=args.samples),
            await latency(url, nc, jetstream=True, rate=args.rate, samples=args.samples),
        ]
    finally:
        await nc.close()
        await asyncio.to_thread(server.stop)
    return {"sink_ms": args.sink_ms, "throughput": runs, "latency_publish_to_sink": latencies}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--sink-ms", type=float, default=0.5)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--samples", type=int, default=500)
    configure_logging("json", level=logging.WARNING)
    report("nats_trigger", asyncio.run(main(parser.parse_args())))
