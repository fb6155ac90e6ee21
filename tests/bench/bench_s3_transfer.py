"""Upload and download of a step output (``--files`` files, ``--size-mib`` MiB in all; 1 GiB of 100
files by default) through the agent's transfer code, against boto3's transfer manager doing the same
in the same run, both against one moto_server (a real S3 HTTP API, in memory, on this machine).

- ``agent_upload``: ``runners.transfers.upload`` of the output directory: leftovers cleared, files
  concurrently (big ones in parts, hashed while read), then the manifest;
- ``agent_download``: ``runners.transfers.download`` of the published output into a fresh directory
  through a fresh (cold) object cache: manifest read, every file fetched into the cache and
  hard-linked into the tree;
- ``boto3_upload`` / ``boto3_download``: one ``s3transfer`` manager (what ``upload_file`` and
  ``download_file`` use) with ``TransferConfig(max_concurrency=--boto3-threads)`` and its default
  8 MiB multipart threshold and part size, every file submitted at once.

Each is run ``--repeat`` times, the agent and boto3 one after the other in each round (who goes
first alternates); figures are the p50 seconds and MiB/s, and ``ratio_*`` is the median over rounds
of the agent's MiB/s over boto3's in the same round (above 1: the agent is faster): pairs taken
side by side suffer a busy machine's swings less than figures taken apart. moto_server, being Python,
is most likely the bottleneck of both: the ratio says whether ours keeps up, not what S3 would give;
``client_cpu_s`` (p50 CPU seconds of this process, all threads) says what each client costs, which
a busy machine disturbs less than wall time.
Peak resident memory of moto_server is reported too (it keeps every object in memory; the outputs
are deleted after each round).

Run: .venv/bin/python tests/bench/bench_s3_transfer.py [--files 100] [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

import psutil
from boto3.s3.transfer import TransferConfig, create_transfer_manager

from kit.objectstore import open_store
from runners.objectcache import ObjectCache
from runners.staging import Remote
from runners.transfers import download, upload
from tests.bench.harness import report, summary
from tests.s3 import MotoServer

MiB = 1024**2


async def quiet(_: str) -> None:
    """The step's log, for the agent's progress lines: not wanted here."""


def make_output(root: Path, files: int, size: int) -> list[str]:
    names = [f"part-{number:04d}.bin" for number in range(files)]
    block = os.urandom(size // files)
    for number, name in enumerate(names):
        # Distinct content per file (ETags differ) without paying for os.urandom of all of it.
        (root / name).write_bytes(number.to_bytes(8, "big") + block[8:])
    return names


def clear(client, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--boto3-threads", type=int, default=16)
    args = parser.parse_args()
    size = args.size_mib * MiB

    scratch = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    server = MotoServer(scratch / "moto.log")
    endpoint = server.start()
    moto = psutil.Process(server._process.pid)  # type: ignore[union-attr]
    try:
        client = endpoint.client()
        bucket = endpoint.make_bucket("bench")
        location = endpoint.location(bucket)
        store = open_store(location, endpoint.env())
        source = scratch / "output"
        source.mkdir()
        names = make_output(source, args.files, size)
        total = sum((source / name).stat().st_size for name in names) / MiB
        manager = create_transfer_manager(client, TransferConfig(max_concurrency=args.boto3_threads))
        samples: dict[str, list[float]] = {
            name: [] for name in ("agent_upload", "agent_download", "boto3_upload", "boto3_download")
        }
        peak_rss = 0
        cpu: dict[str, list[float]] = {name: [] for name in samples}

        def timed(name: str, work) -> None:
            nonlocal peak_rss
            started, cpu_started = time.perf_counter(), time.process_time()
            work()
            samples[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - cpu_started)
            peak_rss = max(peak_rss, moto.memory_info().rss)

        agent = Remote("output bench", "bench", location, store, "agent/out", source, source)

        def agent_upload(down: Path) -> None:
            asyncio.run(upload(agent, 1, quiet))

        def agent_download(down: Path) -> None:
            into = Remote("input bench", "bench", location, store, "agent/out", down / "agent", down)
            asyncio.run(download(into, ObjectCache(down / "objects", cap=2 * size), quiet))

        def boto3_upload(down: Path) -> None:
            futures = [manager.upload(str(source / name), bucket, f"boto3/out/{name}") for name in names]
            for future in futures:
                future.result()

        def boto3_download(down: Path) -> None:
            (down / "boto3").mkdir(parents=True)
            futures = [
                manager.download(bucket, f"boto3/out/{name}", str(down / "boto3" / name)) for name in names
            ]
            for future in futures:
                future.result()

        for round_number in range(args.repeat):
            down = scratch / f"down-{round_number}"
            pairs = [("agent_upload", agent_upload), ("boto3_upload", boto3_upload)]
            pairs += [("agent_download", agent_download), ("boto3_download", boto3_download)]
            if round_number % 2:  # alternate who goes first
                pairs = [pairs[1], pairs[0], pairs[3], pairs[2]]
            for name, work in pairs:
                timed(name, functools.partial(work, down))
            clear(client, bucket)
            shutil.rmtree(down)
        manager.shutdown()

        figures: dict[str, object] = {"files": args.files, "mib": round(total, 1)}
        for name, values in samples.items():
            seconds = summary(values)
            figures[name] = seconds | {
                "mib_per_s": round(total / seconds["p50"], 1),
                "client_cpu_s": summary(cpu[name])["p50"],
            }
        for direction in ("upload", "download"):
            pairs = zip(samples[f"boto3_{direction}"], samples[f"agent_{direction}"], strict=True)
            figures[f"ratio_{direction}"] = round(
                statistics.median(boto3 / agent for boto3, agent in pairs), 2
            )
        figures["load_average"] = [round(load, 1) for load in os.getloadavg()]
        figures["moto_peak_rss_mib"] = round(peak_rss / MiB)
        report("s3_transfer", figures)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
