"""File settled → sink called: how long after (last write + settle) the files source hands a file on.

Writes a few hundred files into a watched directory (each in a few chunks, several writers at once),
with an in-process sink that records when it was called, and prints JSON with p50/p99 of
``sink time − (last write + settle)`` for inotify (and polling, for comparison). Target: p99 ≤ 50 ms
with inotify.

    .venv/bin/python tests/bench/bench_files.py [--files 300] [--settle 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).parents[2]))

from triggers.base import EventResult, TriggerConfig, TriggerEvent
from triggers.files import FilesSource
from triggers.specs import FilesSource as FilesSpec


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def figures(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    return {
        "n": len(ordered),
        "min_ms": ms(ordered[0]),
        "p50_ms": ms(statistics.median(ordered)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "max_ms": ms(ordered[-1]),
    }


async def measure(watch: str, files: int, settle: float, writers: int, chunks: int, poll: float) -> dict:
    root = Path(tempfile.mkdtemp(prefix="sluice-bench-files-"))
    called: dict[str, float] = {}
    last_write: dict[str, float] = {}
    lock = threading.Lock()
    all_called = asyncio.Event()

    async def sink(event: TriggerEvent) -> EventResult:
        called[event.fields["path"]] = time.monotonic()
        if len(called) == files:
            all_called.set()
        return EventResult(event_id=len(called), outcome="run", run_id=None)

    async def save_state(name: str, state: dict[str, Any]) -> None:
        pass

    def writer(names: list[str], pace: float) -> None:
        for name in names:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                for i in range(chunks):
                    f.write(b"x" * 4096)
                    f.flush()
                    last = time.monotonic()
                    if i < chunks - 1:
                        time.sleep(0.02)
            with lock:
                last_write[name] = last
            time.sleep(pace)

    names = [f"in/{i % 7}/f{i:05}.csv" for i in range(files)]
    source = FilesSource()
    try:
        async with contextlib.AsyncExitStack() as stack:
            await source.start(stack, sink, save_state)
            spec = FilesSpec(
                datastore="bench", pattern="in/**/*.csv", settle=settle, watch=watch, poll_interval=poll
            )
            await source.put(TriggerConfig(name="bench", on=spec, root=str(root)))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            threads = [
                threading.Thread(target=writer, args=(names[i::writers], 0.005), daemon=True)
                for i in range(writers)
            ]
            for thread in threads:
                thread.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_called.wait(), 120)
            elapsed = time.monotonic() - started
            status = dict(source.status("bench"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lags = [called[name] - (last_write[name] + settle) for name in names if name in called]
    return {
        "watch": status["watch"],
        "files": files,
        "fired": len(called),
        "settle_s": settle,
        "writers": writers,
        "chunks_per_file": chunks,
        "seconds": round(elapsed, 2),
        "beyond_settle": figures(lags),
        "early": sum(1 for lag in lags if lag < 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--settle", type=float, default=0.5)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--poll-interval", type=float, default=0.25)
    parser.add_argument("--no-poll", action="store_true", help="skip the polling comparison")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    runs = [
        asyncio.run(
            measure("inotify", args.files, args.settle, args.writers, args.chunks, args.poll_interval)
        )
    ]
    if not args.no_poll:
        runs.append(
            asyncio.run(
                measure("poll", args.files, args.settle, args.writers, args.chunks, args.poll_interval)
            )
        )
    print(
        json.dumps(
            {"benchmark": "files_settled_to_sink", "target_p99_ms_inotify": 50, "runs": runs}, indent=2
        )
    )


if __name__ == "__main__":
    main()
