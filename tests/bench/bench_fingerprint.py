"""Fingerprinting a datastore input of 10,000 files: listing and content, first time and cached.

Method: a tree of ``--files`` files (``--per-dir`` to a directory, ``--size`` random bytes each) in a
scratch directory, then a pause of ``DEFAULT_MIN_AGE_S`` and a little, so that the files count as
settled and their digests may be cached (data still being written is read again every time). Each
figure is the wall time of ``await DataFingerprints.of(...)`` on this process's event loop, repeated
``--repeat`` times:

- ``listing_first``: a new ``DataFingerprints`` each time; ``listing_again``: the same one again
  (listings are not cached, so these differ only by what the kernel caches);
- ``content_cold``: a new ``DataFingerprints`` each time, so every file is read and hashed;
  ``content_cached``: the same one again, so every digest comes from its cache;
- ``*_after_one_change``: one more file rewritten (same size, new bytes) before each call; a file
  changed less than ``DEFAULT_MIN_AGE_S`` before it is read is not cached, so each content call also
  reads again the files changed in the calls just before;
- ``burst_of_50_listing``: 50 calls for the input at once, which share one walk.

The files were just written, so the kernel's page cache holds them: ``content_cold`` is cold for
Sluice's cache, not for the disk.

Run: .venv/bin/python tests/bench/bench_fingerprint.py [--files 10000] [--per-dir 100] [--size 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

from daemon.planning.data_fingerprints import DEFAULT_MIN_AGE_S, DataFingerprints
from tests.bench.harness import report, summary, temp_dir


def make_tree(root: Path, files: int, per_dir: int, size: int) -> list[Path]:
    paths = [root / f"part-{i // per_dir:04}" / f"file-{i:06}.bin" for i in range(files)]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return paths


async def timed(
    call: Callable[[], Awaitable[object]], repeat: int, *, before: Callable[[], object] = lambda: None
) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        before()
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return summary(samples)


async def measure(root: Path, files: list[Path], repeat: int) -> dict[str, dict[str, float]]:
    warm = DataFingerprints()
    await warm.of(root, content=True)
    changes = iter(files[:: max(1, len(files) // (2 * repeat))])
    size = files[0].stat().st_size

    def change_one_file() -> None:
        next(changes).write_bytes(os.urandom(size))

    async def burst() -> list[str]:
        fingerprints = DataFingerprints()
        return await asyncio.gather(*(fingerprints.of(root) for _ in range(50)))

    return {
        "listing_first": await timed(lambda: DataFingerprints().of(root), repeat),
        "listing_again": await timed(lambda: warm.of(root), repeat),
        "content_cold": await timed(lambda: DataFingerprints().of(root, content=True), repeat),
        "content_cached": await timed(lambda: warm.of(root, content=True), repeat),
        "listing_after_one_change": await timed(lambda: warm.of(root), repeat, before=change_one_file),
        "content_after_one_change": await timed(
            lambda: warm.of(root, content=True), repeat, before=change_one_file
        ),
        "burst_of_50_listing": await timed(burst, repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--per-dir", type=int, default=100)
    parser.add_argument("--size", type=int, default=4096, help="bytes per file")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = temp_dir()
    try:
        files = make_tree(root / "input", args.files, args.per_dir, args.size)
        time.sleep(DEFAULT_MIN_AGE_S + 0.5)
        seconds = asyncio.run(measure(root / "input", files, args.repeat))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(
        "data_fingerprint",
        {
            "tree": {"files": args.files, "per_dir": args.per_dir, "bytes_per_file": args.size},
            "machine": {"cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
            "seconds": seconds,
        },
    )


if __name__ == "__main__":
    main()
