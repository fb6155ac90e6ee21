"""Cron fire jitter and memory with thousands of cron triggers loaded in one source.

Method: the real ``CronSource`` on this process's event loop, with an in-process sink that notes
``time.time() - scheduled time`` the moment it is called and returns at once (the daemon's commit is
left out: this measures the scheduler, the part APScheduler 3's job store made slow). Each trigger
fires once a minute at a random second (``S * * * * *``, S uniform in 0–59: with 10,000 triggers
~167 fires fall due together every second) in a random IANA time zone, so no two triggers share a
parsed ``CronTrigger`` (the worst case for memory). After the triggers are put, fires during the next
``--seconds`` (default 61: every trigger fires once) are sampled; fires that fell due while the
triggers were still being put are left out. Then the same with the next count.

RSS is the process's resident memory after the triggers are put, and its growth over the empty
source (``rss_growth_mb``).

Run: .venv/bin/python tests/bench/bench_cron.py [--counts 1000,10000] [--seconds 61]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import random
import sys
import time
import zoneinfo
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[2]))

import psutil
import structlog

from tests.bench.harness import report
from triggers.base import EventResult, TriggerConfig, TriggerEvent
from triggers.cron import CronSource
from triggers.specs import CronSource as CronSpec

MB = 1024 * 1024


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(count: int, seconds: float, zones: list[str]) -> dict[str, Any]:
    process = psutil.Process()
    gc.collect()
    rss_before = process.memory_info().rss
    samples: list[float] = []
    measuring_from = float("inf")

    async def sink(event: TriggerEvent) -> EventResult:
        now = time.time()
        scheduled = datetime.fromisoformat(event.dedupe_key).timestamp()
        if scheduled >= measuring_from:
            samples.append(now - scheduled)
        return EventResult(event_id=1, outcome="run", run_id="r")

    async def save_state(name: str, state: dict[str, Any]) -> None:
        return None

    gc_pauses: list[float] = []
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        elif time.time() >= measuring_from:
            gc_pauses.append((time.perf_counter() - gc_started[0]) * 1000)

    rng = random.Random(count)
    source = CronSource()
    async with contextlib.AsyncExitStack() as stack:
        await source.start(stack, sink, save_state)
        started = time.perf_counter()
        for i in range(count):
            spec = CronSpec(cron=f"{rng.randrange(60)} * * * * *", timezone=rng.choice(zones), catchup="none")
            await source.put(TriggerConfig(name=f"cron-{i}", on=spec))
        load_s = time.perf_counter() - started
        gc.collect()
        rss_after = process.memory_info().rss
        measuring_from = float(int(time.time()) + 1)
        gc.callbacks.append(on_gc)
        try:
            await asyncio.sleep(measuring_from - time.time() + seconds)
        finally:
            gc.callbacks.remove(on_gc)
    ordered = sorted(ms * 1000 for ms in samples)
    return {
        "triggers": count,
        "fires_sampled": len(ordered),
        "jitter_ms": {
            "p50": round(percentile(ordered, 0.50), 3),
            "p90": round(percentile(ordered, 0.90), 3),
            "p99": round(percentile(ordered, 0.99), 3),
            "max": round(ordered[-1], 3),
            "min": round(ordered[0], 3),
        },
        "gc_pauses_while_sampled": {"n": len(gc_pauses), "max_ms": round(max(gc_pauses, default=0.0), 3)},
        "put_all_s": round(load_s, 2),
        "put_mean_ms": round(load_s / count * 1000, 3),
        "rss_mb": round(rss_after / MB, 1),
        "rss_growth_mb": round((rss_after - rss_before) / MB, 1),
    }


async def main(counts: list[int], seconds: float) -> None:
    zones = sorted(zoneinfo.available_timezones())
    results = [await measure(count, seconds, zones) for count in counts]
    report(
        "cron",
        {
            "method": (
                "CronSource with N triggers, each 'S * * * * *' (once a minute at a random second S) in a "
                f"random time zone; sink notes time.time() - scheduled time and returns at once; fires over "
                f"{seconds:g} s after all puts are sampled"
            ),
            "target_p99_ms": 10,
            "machine": {"cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
            "results": results,
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--seconds", type=float, default=61.0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main([int(count) for count in args.counts.split(",")], args.seconds))
