"""Trigger event benchmarks: events turned into committed runs, and a NATS message to its run's first
attempt accepted by an agent.

Everything runs in this process against embedded PostgreSQL and NATS: the scheduler (with the trigger
manager and its sources) and the HTTP API as the daemon runs them, and fake agents (real NATS peers,
``tests/integration/fake_agent.py``) that accept at once and finish at once.

1. sink: ``--events`` events handed straight to the daemon's sink (``daemon.intake.events.Ingest``), 32 at a
   time: committed runs per second; then 1,000 one after the other: latency of one commit.
2. jetstream: ``--events`` messages stored on a stream while their trigger is paused, then the trigger
   is resumed: committed runs per second through the nats source (pull consumer, acked after commit),
   with agents running every run at once in this process; then the same for ingestion alone: no agent
   is connected, so every run is committed and its step waits.
3. latency: 1,000 messages published one after the other on a core NATS subject (and on a JetStream
   stream) that a ``nats`` trigger watches, by a peer in a process of its own; from publishing to
   the agent having accepted the run's first step. Agents finish at once. Idle: each message
   follows the previous one by 20 ms, when its run has ended (an idle daemon, as peers that publish
   every few seconds find it); busy: each follows at once, overlapping the completion of the run
   before.

Run: .venv/bin/python tests/bench/bench_ingest.py [--events 5000] [--messages 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

import msgspec
from nats.js.api import StreamConfig

from daemon.trust import permissions
from kit.logsetup import configure_logging
from kit.tasks import TaskSet
from tests.bench.bench_dispatch import PIPELINE, System, percentile
from tests.bench.harness import embedded_servers, report, temp_dir
from tests.integration.fake_agent import Outcome
from triggers.base import TriggerEvent

WARM_UP = 50
IDLE_PAUSE_S = 0.02
CONTROL = "bench.accepted"

DIRECT = """
kind: Trigger
name: direct
pipeline: bench
on:
  run: {pipeline: bench, status: [cancelled]}
params:
  n: "${event.data.n}"
"""

WAITING = PIPELINE.replace("name: bench", "name: waiting")

NATS_TRIGGER = """
kind: Trigger
name: {name}
pipeline: {pipeline}
on:
  nats: {{subject: "{subject}"{stream}}}
params:
  n: "${{event.data.n}}"
"""


def nats_trigger(name: str, pipeline: str, subject: str, stream: str | None = None) -> str:
    return NATS_TRIGGER.format(
        name=name, pipeline=pipeline, subject=subject, stream=f", stream: {stream}" if stream else ""
    )


def summary(samples: list[float]) -> dict:
    return {
        "n": len(samples),
        "p50": round(statistics.median(samples), 2),
        "p99": round(percentile(samples, 0.99), 2),
        "max": round(max(samples), 2),
        "mean": round(statistics.fmean(samples), 2),
    }


async def post(system: System, path: str) -> None:
    async with system.session.post(f"{system.api}{path}") as response:
        assert response.status == 200, await response.text()


async def committed(system: System, trigger: str) -> int:
    return await system.pool.fetchval("SELECT count(*) FROM events WHERE trigger = $1", trigger)


async def sink_phase(system: System, events: int) -> dict:
    # Agents that finish at once keep the ready queue short: with none, every new run's step waits
    # in the dispatcher, whose planning pass over all waiting steps then dominates (its benchmark).
    await system.agents(4, 512.0, lambda assignment: Outcome())
    await system.apply(DIRECT)
    sink = system.scheduler.triggering.sink
    semaphore = asyncio.Semaphore(32)

    async def send(index: int) -> str:
        async with semaphore:
            result = await sink(
                TriggerEvent(trigger="direct", dedupe_key=f"e{index}", fields={"data": {"n": index}})
            )
            assert result.outcome == "run", result
            return result.outcome

    started = time.perf_counter()
    await asyncio.gather(*(send(index) for index in range(events)))
    elapsed = time.perf_counter() - started
    samples = []
    for index in range(events, events + 1000 + WARM_UP):
        began = time.perf_counter()
        await send(index)
        if index >= events + WARM_UP:
            samples.append((time.perf_counter() - began) * 1000)
    duplicates_started = time.perf_counter()
    await asyncio.gather(*(send_duplicate(sink, index) for index in range(1000)))
    duplicates_s = time.perf_counter() - duplicates_started
    return {
        "events": events,
        "concurrency": 32,
        "runs_per_s": round(events / elapsed, 1),
        "sequential_commit_ms": summary(samples),
        "duplicates_per_s": round(1000 / duplicates_s, 1),
    }


async def send_duplicate(sink, index: int) -> None:
    result = await sink(TriggerEvent(trigger="direct", dedupe_key=f"e{index}", fields={"data": {"n": index}}))
    assert result.outcome == "duplicate", result


async def jetstream_phase(system: System, events: int, *, execute: bool) -> dict:
    js = system.admin.jetstream()
    with contextlib.suppress(Exception):
        await js.delete_stream("BENCHIN")
    await js.add_stream(StreamConfig(name="BENCHIN", subjects=["benchin.>"]))
    if execute:
        await system.agents(4, 512.0, lambda assignment: Outcome())
    else:
        await system.apply(WAITING)
    await system.apply(nats_trigger("stream", "bench" if execute else "waiting", "benchin.>", "BENCHIN"))
    await post(system, "/triggers/stream/pause")
    acks = [js.publish("benchin.x", msgspec.json.encode({"n": index})) for index in range(events)]
    for start in range(0, events, 500):
        await asyncio.gather(*acks[start : start + 500])
    started = time.perf_counter()
    await post(system, "/triggers/stream/resume")
    while await committed(system, "stream") < events:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    runs = await system.pool.fetchval("SELECT count(*) FROM runs WHERE trigger = 'stream'")
    return {"messages": events, "runs": runs, "runs_per_s": round(events / elapsed, 1)}


async def latency_phase(system: System, messages: int, *, pause_s: float) -> dict:
    """Messages one after the other from a peer in a process of its own (``peer_publisher.py``),
    each ``pause_s`` after the previous one was accepted; agents finish at once. With a pause the
    daemon is idle when a message arrives: the previous run has ended (peers publish every few
    seconds); without, the message overlaps that run's completion."""
    accepted: dict[int, float] = {}
    signals = TaskSet("accepted-signals")

    def behaviour(assignment):
        n = int(assignment.argv[1])
        if n not in accepted:
            accepted[n] = time.monotonic()
            signals.spawn(system.admin.publish(CONTROL, str(n).encode()), name=f"accepted-{n}")
        return Outcome()

    await system.agents(4, 512.0, behaviour)
    js = system.admin.jetstream()
    with contextlib.suppress(Exception):
        await js.delete_stream("BENCHLAT")
    await js.add_stream(StreamConfig(name="BENCHLAT", subjects=["benchlat.>"]))
    await system.apply(nats_trigger("core", "bench", "benchcore.in"))
    await system.apply(nats_trigger("durable", "bench", "benchlat.in", "BENCHLAT"))
    results = {}
    first = 0
    for name, subject, options in (
        ("core", "benchcore.in", []),
        ("jetstream", "benchlat.in", ["--jetstream"]),
    ):
        count = messages + WARM_UP
        peer = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("peer_publisher.py")),
            system.nats.url,
            subject,
            f"--creds={system.nats.service_creds_file('peer')}",
            f"--control-creds={system.nats.creds_file('peer-control', permissions.admin())}",
            f"--control={CONTROL}",
            f"--first={first}",
            f"--count={count}",
            f"--pause={pause_s}",
            *options,
            stdout=asyncio.subprocess.PIPE,
        )
        assert peer.stdout is not None
        output, _ = await peer.communicate()
        assert peer.returncode == 0, output
        started = json.loads(output.decode().splitlines()[-1])
        samples = [
            (accepted[first + index] - at) * 1000 for index, at in enumerate(started) if index >= WARM_UP
        ]
        results[name] = summary(samples)
        first += count
    await signals.aclose()
    return results


async def main(args: argparse.Namespace) -> dict:
    root = temp_dir()
    async with embedded_servers(root) as (postgres, nats):
        results: dict = {}
        async with System(postgres, nats, root, "ingest_sink") as system:
            results["sink"] = await sink_phase(system, args.events)
        async with System(postgres, nats, root, "ingest_jetstream") as system:
            results["jetstream"] = await jetstream_phase(system, args.events, execute=True)
        async with System(postgres, nats, root, "ingest_waiting") as system:
            results["jetstream_ingest_only"] = await jetstream_phase(system, args.events, execute=False)
        async with System(postgres, nats, root, "ingest_latency_idle") as system:
            results["nats_to_accepted_ms_idle"] = await latency_phase(
                system, args.messages, pause_s=IDLE_PAUSE_S
            )
        async with System(postgres, nats, root, "ingest_latency_busy") as system:
            results["nats_to_accepted_ms_busy"] = await latency_phase(system, args.messages, pause_s=0)
        return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=1000)
    configure_logging("json", level=logging.WARNING)
    report("bench_ingest", asyncio.run(main(parser.parse_args())))
