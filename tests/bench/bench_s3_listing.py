"""A prefix of 100,000 objects: its listing fingerprint, and a bucket files trigger's polls.

Method: a moto S3 server in a child process (``ThreadedMotoServer``), whose objects are written
straight into its backend (about 10,000 a second, where PUTs over HTTP manage about 200), under
``landing/incoming/day-NN/NNNNNN.csv``; the datastore is the ``landing`` prefix. Requests are counted
from the server's access log (one line per HTTP request), so they are what went over the wire; the
trigger's own count (``BucketTrigger.requests``) is printed beside it. Each figure has the wall
seconds and this process's CPU seconds (the server's work is in the other process):

- ``fingerprint``: ``StoreFingerprints.of(location, "incoming")`` (the daemon's ``hash: listing`` of
  an s3 path);
- ``first_full_poll``: a new trigger's first listing (every object is new and starts settling);
- ``settle_all``: confirming those objects' ETags and sizes (one listing over their range, not a
  HEAD each);
- ``restart_full_poll``: the listing after a restart, with the saved state of every object
  (nothing is new);
- ``incremental_poll_nothing_new``: a poll between full listings when nothing came;
- ``incremental_poll_after_10``: the same after 10 new objects whose keys sort last (a new day),
  and ``settle_10``: confirming them (a HEAD each).

moto's ListObjectsV2 does work in proportion to the whole bucket for every page, so the wall seconds of
listings here are mostly moto's (about 1 s a page at 100,000 keys); the requests and this process's
CPU seconds are what carries over to a real store.

Run: .venv/bin/python tests/bench/bench_s3_listing.py [--objects 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[2]))

import structlog

from daemon.planning.store_fingerprints import StoreFingerprints
from daemon.runtime.embedded import free_port
from kit.objectstore import S3Location, open_store
from tests.bench.harness import report, temp_dir
from triggers.base import EventResult, TriggerConfig, TriggerEvent
from triggers.files import FilesSource
from triggers.files.accounts import dump_objects
from triggers.files.bucket import BucketTrigger
from triggers.specs import FilesSource as FilesSpec

BUCKET = "bench-listing"
REGION = "us-east-1"
KEY_ID, SECRET = "AKIABENCH", "bench-secret"


def serve(port: int, objects: int, log_path: str, ready: Any) -> None:
    """The child process: a moto S3 server holding ``objects`` objects, logging every request."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    handler = logging.FileHandler(log_path)
    logging.getLogger("werkzeug").addHandler(handler)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(BUCKET, REGION)
    for i in range(objects):
        backend.put_object(BUCKET, object_key(i), f"row {i}\n".encode())
    ready.set()
    while True:
        time.sleep(3600)


def object_key(i: int, day: int | None = None) -> str:
    return f"landing/incoming/day-{i // 10_000 if day is None else day:02}/{i:06}.csv"


class Requests:
    """HTTP requests the server logged since the last ``take``, by kind."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def take(self) -> dict[str, int]:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            lines = log.read().decode(errors="replace").splitlines()
            self.offset = log.tell()
        requests = [line for line in lines if '"' in line and "HTTP/1.1" in line]
        return {
            "list": sum("list-type=2" in line for line in requests),
            "head": sum('"HEAD ' in line for line in requests),
            "all": len(requests),
        }


async def measured(requests: Requests, call: Callable[[], Awaitable[Any]]) -> tuple[dict[str, Any], Any]:
    requests.take()
    wall, cpu = time.perf_counter(), time.process_time()
    result = await call()
    figures = {
        "seconds": round(time.perf_counter() - wall, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
        "requests": requests.take(),
    }
    return figures, result


async def noop_sink(event: TriggerEvent) -> EventResult:
    return EventResult(event_id=0, outcome="run")


async def noop_save(name: str, state: dict[str, Any]) -> None:
    pass


async def measure(location: S3Location, requests: Requests, add: Callable[[], None]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    figures["fingerprint"], _ = await measured(requests, lambda: StoreFingerprints().of(location, "incoming"))

    spec = FilesSpec(datastore="landing", pattern="incoming/**/*.csv", settle=0.0)
    config = TriggerConfig(name="bench", on=spec, location=location)
    source = FilesSource()
    async with contextlib.AsyncExitStack() as stack:
        await source.start(stack, noop_sink, noop_save)
        store = open_store(location)
        first = BucketTrigger(source, config, spec, location, store, {})
        figures["first_full_poll"], _ = await measured(requests, first.full_poll)
        figures["first_full_poll"]["pending"] = len(first.settler)
        figures["first_full_poll"]["trigger_requests"] = first.requests
        keys = sorted(first.settler.paths())
        figures["settle_all"], sigs = await measured(requests, lambda: first._signatures(keys))
        seen = dict(zip(keys, sigs, strict=True))
        figures["saved_state_bytes"] = len(json.dumps(dump_objects(seen)))

        restarted = BucketTrigger(source, config, spec, location, store, dict(seen))
        figures["restart_full_poll"], _ = await measured(requests, restarted.full_poll)
        figures["restart_full_poll"]["pending"] = len(restarted.settler)
        before = restarted.requests
        figures["incremental_poll_nothing_new"], _ = await measured(requests, restarted.incremental_poll)
        figures["incremental_poll_nothing_new"]["trigger_requests"] = restarted.requests - before
        add()
        before = restarted.requests
        figures["incremental_poll_after_10"], _ = await measured(requests, restarted.incremental_poll)
        figures["incremental_poll_after_10"]["pending"] = len(restarted.settler)
        figures["incremental_poll_after_10"]["trigger_requests"] = restarted.requests - before
        new = restarted.settler.paths()
        figures["settle_10"], _ = await measured(requests, lambda: restarted._signatures(new))
    return figures


def main() -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is the figures
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=100_000)
    args = parser.parse_args()
    root = temp_dir()
    log_path = root / "moto.log"
    log_path.touch()
    port = free_port()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    server = context.Process(target=serve, args=(port, args.objects, str(log_path), ready), daemon=True)
    made = time.perf_counter()
    server.start()
    try:
        if not ready.wait(600):
            raise SystemExit("the moto server did not get ready within 600 s")
        made_s = time.perf_counter() - made
        endpoint = f"http://127.0.0.1:{port}"
        os.environ |= {"BENCH_S3_KEY_ID": KEY_ID, "BENCH_S3_SECRET": SECRET}
        location = S3Location(
            bucket=BUCKET,
            prefix="landing",
            endpoint=endpoint,
            region=REGION,
            path_style=True,
            access_key_id_env="BENCH_S3_KEY_ID",
            secret_access_key_env="BENCH_S3_SECRET",
        )

        def add_ten() -> None:
            import boto3

            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name=REGION,
                aws_access_key_id=KEY_ID,
                aws_secret_access_key=SECRET,
            )
            for i in range(10):
                client.put_object(Bucket=BUCKET, Key=object_key(i, day=99), Body=b"new\n")

        figures = asyncio.run(measure(location, Requests(log_path), add_ten))
    finally:
        server.terminate()
        server.join(10)
    report(
        "s3_listing",
        {
            "objects": args.objects,
            "objects_made_in_seconds": round(made_s, 1),
            "machine": {"cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
            **figures,
        },
    )


if __name__ == "__main__":
    main()
