"""A peer service for latency benchmarks, in a process of its own as a real one would be: publishes
``{"n": n}`` messages one at a time on a subject (core NATS, or JetStream waiting for the stream's
acknowledgement), each after the benchmark said on ``--control`` that the previous one was accepted
(and ``--pause`` seconds more). Prints, as JSON, the ``time.monotonic()`` at which each publish began:
the clock is the machine's, so the benchmark can subtract it from its own readings.

It publishes with a service's credentials (``--creds``), as a real peer would, and hears from the
benchmark on a connection of its own (``--control-creds``).

Run by ``bench_ingest.py``: python tests/bench/peer_publisher.py URL SUBJECT --count N [--jetstream]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

import msgspec

from kit.nats import NatsOptions, connect


async def main(args: argparse.Namespace) -> list[float]:
    nc = await connect(NatsOptions(args.url, creds=args.creds), name="bench-peer")
    control = await connect(NatsOptions(args.url, creds=args.control_creds), name="bench-peer-control")
    accepted: asyncio.Queue[int] = asyncio.Queue()

    async def on_accepted(msg) -> None:
        accepted.put_nowait(int(msg.data))

    await control.subscribe(args.control, cb=on_accepted)
    await control.flush()
    js = nc.jetstream()
    started = []
    try:
        for n in range(args.first, args.first + args.count):
            started.append(time.monotonic())
            data = msgspec.json.encode({"n": n})
            if args.jetstream:
                await js.publish(args.subject, data)
            else:
                await nc.publish(args.subject, data)
                await nc.flush()
            while await asyncio.wait_for(accepted.get(), 10) != n:
                pass
            await asyncio.sleep(args.pause)
    finally:
        await nc.drain()
        await control.drain()
    return started


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("subject")
    parser.add_argument("--creds")
    parser.add_argument("--control-creds")
    parser.add_argument("--control", default="bench.accepted")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--jetstream", action="store_true")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
