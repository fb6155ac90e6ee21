"""Fingerprinting an ``s3`` datastore input by content (``hash: content``): a prefix of 2,000 objects,
cold, then from the digest cache; seconds and the requests the store received. (Listing
fingerprints of 100,000 objects: ``bench_s3_listing``.)

Method: a real S3 endpoint (``moto_server``, as the tests use, on this machine) with ``--objects``
``--content-objects`` small objects under ``small/``, written beforehand (64 at
once). Each figure is the wall time of ``await StoreFingerprints.of(...)`` on this process's event
loop, repeated ``--repeat`` times; ``requests`` counts the request lines moto_server logged during
one call of each kind (LIST pages, HEADs and GETs). moto keeps objects in memory and answers from
one Python process, so the seconds are mostly moto's; the request counts are what a real store
would see (a LIST returns up to 1,000 keys).

Run: .venv/bin/python tests/bench/bench_s3_fingerprint.py [--content-objects 2000]
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

import obstore

sys.path.insert(0, str(Path(__file__).parents[2]))

from daemon.planning.store_fingerprints import StoreFingerprints
from kit.objectstore import S3Location, open_store
from tests.bench.harness import report, summary, temp_dir
from tests.s3 import MotoServer, S3Endpoint


async def fill(endpoint: S3Endpoint, location: S3Location, prefix: str, count: int) -> None:
    store = open_store(location, endpoint.env())
    writing = asyncio.Semaphore(64)

    async def put(index: int) -> None:
        async with writing:
            await obstore.put_async(store, f"{prefix}/d{index // 1000:03}/o{index:06}.csv", b"%d\n" % index)

    await asyncio.gather(*(put(index) for index in range(count)))


def requests_logged(log: Path) -> int:
    with log.open("rb") as handle:
        return sum(1 for line in handle if b'"GET ' in line or b'"HEAD ' in line)


async def timed(name: str, call: Callable[[], Awaitable[object]], repeat: int, log: Path) -> dict[str, float]:
    """The figures of ``call``, also printed to stderr at once: a long run keeps what it measured."""
    samples = []
    before = requests_logged(log)
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    figures = summary(samples) | {"requests_per_call": round((requests_logged(log) - before) / repeat, 1)}
    print(name, figures, file=sys.stderr, flush=True)
    return figures


async def measure(endpoint: S3Endpoint, log: Path, content_objects: int, repeat: int) -> dict:
    endpoint.make_bucket("bench-fingerprint")
    location = endpoint.location("bench-fingerprint", "landing")
    started = time.perf_counter()
    await fill(endpoint, location, "small", content_objects)
    filled = time.perf_counter() - started
    print("filled in", round(filled, 1), "s", file=sys.stderr, flush=True)
    warm = StoreFingerprints(environ=endpoint.env())
    await warm.of(location, "small", content=True)
    return {
        "fill_seconds": round(filled, 1),
        "content_cold": await timed(
            "content_cold",
            lambda: StoreFingerprints(environ=endpoint.env()).of(location, "small", content=True),
            repeat,
            log,
        ),
        "content_cached": await timed(
            "content_cached", lambda: warm.of(location, "small", content=True), repeat, log
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--content-objects", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    root = temp_dir()
    server = MotoServer(root / "moto.log")
    try:
        endpoint = server.start()
        figures = asyncio.run(measure(endpoint, server.log_file, args.content_objects, args.repeat))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    report(
        "s3_fingerprint",
        {
            "objects": args.content_objects,
            "machine": {"cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
            "seconds": figures,
        },
    )


if __name__ == "__main__":
    main()
