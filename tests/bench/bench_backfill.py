"""A backfill of one year of hourly fires (8,760 events) on a pipeline whose steps are all reused, with
live cron triggers firing every second meanwhile.

Method: a real `sluice up --agents 1` on a scratch data dir. Pipeline ``scoring`` has one step that
uses none of its params, so after one run executed it every run reuses it (over as it is made). ``--live``
cron triggers (default 100) fire every second on pipeline ``tick`` (reused likewise). The backfill of
trigger ``hourly`` over 2023 is created over HTTP (default max-active) and polled until it ends.

- ``runs_per_s``: runs committed / seconds from the request to the backfill's end;
- ``peak_rss_mb``: the `sluice up` process (daemon; PostgreSQL, NATS and the agent are children, not
  counted), sampled every 50 ms during the backfill;
- live jitter: how late each live fire was handed to the daemon: its event's ``received_at`` minus
  its scheduled time. ``received_at`` is stamped by the sink (``Ingest.offer``) as the cron source's
  lane calls it, the instant ``bench_cron`` takes as fired; unlike there, the daemon's sink returns
  only after its commit, so fires due together beyond the lanes' bound on sink calls
  (``triggers.cron.SINK_CALLS``) are handed over a commit late, and that wait is in the figure, as
  are the daemon's pauses (a full garbage collection). ``idle``: fires scheduled in the ``--idle-s``
  seconds before the backfill (the live triggers running alone); ``during``: while it runs.

Run: .venv/bin/python tests/bench/bench_backfill.py [--live 100] [--idle-s 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

import psutil

from tests.bench.harness import report, scratch_env, sluice_up, temp_dir

PIPELINES = """
kind: Pipeline
name: scoring
params:
  date: {type: string}
steps:
  - name: score
    command: ["true"]
---
kind: Pipeline
name: tick
params:
  at: {type: string}
steps:
  - name: only
    command: ["true"]
---
kind: Trigger
name: hourly
pipeline: scoring
on: {cron: "0 * * * *", catchup: none}
params: {date: "${event.scheduled_date}"}
"""
LIVE = """
---
kind: Trigger
name: live-%d
pipeline: tick
on: {cron: "* * * * * *", catchup: none}
params: {at: "${event.scheduled_time}"}
"""


class Api:
    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        self.token = (data_dir / "credentials" / "api-token").read_text().strip()

    def call(
        self, method: str, path: str, body: object = None, content_type: str = "application/json"
    ) -> dict:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(
            f"{self.url}/api/v1{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def all(self, path: str) -> list[dict]:
        items, cursor = [], None
        while True:
            page = self.call("GET", f"{path}?limit=500" + (f"&cursor={cursor}" if cursor else ""))
            items.extend(page["items"])
            if not (cursor := page["next_cursor"]):
                return items


def wait_run(api: Api, run_id: str) -> None:
    deadline = time.monotonic() + 60
    while api.call("GET", f"/runs/{run_id}")["status"] != "succeeded":
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not succeed")
        time.sleep(0.1)


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def jitter(api: Api, live: int, low: float, high: float) -> dict:
    delays = []
    for index in range(live):
        for event in api.all(f"/triggers/live-{index}/events"):
            scheduled = datetime.fromisoformat(event["fields"]["scheduled_time"]).timestamp()
            if low <= scheduled < high:
                delays.append(datetime.fromisoformat(event["received_at"]).timestamp() - scheduled)
    delays.sort()
    if not delays:
        return {"n": 0}
    return {
        "n": len(delays),
        "p50_ms": round(percentile(delays, 0.5) * 1000, 2),
        "p99_ms": round(percentile(delays, 0.99) * 1000, 2),
        "max_ms": round(delays[-1] * 1000, 2),
    }


def main(args: argparse.Namespace) -> dict:
    root = temp_dir()
    data_dir = root / "data"
    with sluice_up(data_dir, scratch_env(root / "home"), "--agents", "1") as (process, url, _):
        api = Api(url, data_dir)
        documents = PIPELINES + "".join(LIVE % index for index in range(args.live))
        api.call("POST", "/apply", documents.encode(), "application/yaml")
        # One executed run of each: every later run reuses its step.
        wait_run(api, api.call("POST", "/pipelines/scoring/runs", {"params": {"date": "x"}})["run_id"])
        wait_run(api, api.call("POST", "/pipelines/tick/runs", {"params": {"at": "x"}})["run_id"])
        time.sleep(3)  # live fires settle in
        time.sleep(args.idle_s)  # the live triggers alone: the idle figure's seconds
        daemon = psutil.Process(process.pid)
        peak = [daemon.memory_info().rss]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.05):
                peak.append(daemon.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.time()
        created = api.call("POST", "/triggers/hourly/backfills", {"from": "2023-01-01", "to": "2024-01-01"})
        while (seen := api.call("GET", f"/backfills/{created['id']}"))["status"] == "running":
            time.sleep(0.05)
        ended = time.time()
        sampling.set()
        sampler.join()
        elapsed = ended - started
        time.sleep(2)  # the live events of the last seconds are committed
        return {
            "events": seen["counts"]["offered"],
            "runs": seen["counts"]["runs"],
            "status": seen["status"],
            "seconds": round(elapsed, 2),
            "runs_per_s": round(seen["counts"]["runs"] / elapsed),
            "peak_rss_mb": round(max(peak) / 2**20, 1),
            "live_triggers": args.live,
            "live_jitter_during": jitter(api, args.live, started, ended),
            "live_jitter_idle": jitter(api, args.live, started - args.idle_s, started),
            "machine": {"cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--live", type=int, default=100, help="live every-second cron triggers")
    parser.add_argument("--idle-s", type=float, default=8.0, help="seconds of live fires alone before it")
    report("backfill", main(parser.parse_args()))
