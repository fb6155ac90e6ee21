"""Triggers' promises across daemon restarts and crashes, end to end with real `sluice up` processes
(``--agents 0``: runs stay queued; what is counted is the runs that triggers create):

- cron catch-up: three every-second triggers, ``catchup: all | latest | none``, and a daemon stopped
  for ~5 s: every missed second once, only the newest missed second, or none;
- files: 50 files written slowly make 50 runs (and batches), none before its file is complete, and
  files that arrive while the daemon is down fire once after it starts;
- JetStream: 1,000 messages published while the daemon is killed with -9 twice make 1,000 runs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.api import PubAck, StorageType, StreamConfig, StreamState

from tests.e2e.sluice import FAST_TIMINGS, api_all, apply, wait_for

pytestmark = pytest.mark.e2e

SECOND = timedelta(seconds=1)

CRON = """
kind: Pipeline
name: tick
params:
  at: {type: string}
steps:
  - name: only
    command: ["true", "${params.at}"]
"""
CRON_TRIGGER = """
---
kind: Trigger
name: catchup-%(policy)s
pipeline: tick
on:
  cron: "* * * * * *"
  catchup: %(policy)s
params:
  at: "${event.scheduled_time}"
"""
POLICIES = ("all", "latest", "none")


def cron_events(env: dict[str, str], policy: str) -> list[dict]:
    return api_all(f"/triggers/catchup-{policy}/events", env)


def scheduled(event: dict) -> datetime:
    return datetime.fromisoformat(event["fields"]["scheduled_time"])


def contiguous(times: list[datetime]) -> bool:
    return all(later - earlier == SECOND for earlier, later in itertools.pairwise(times))


def floor_second(instant: datetime) -> datetime:
    return instant.replace(microsecond=0)


@pytest.mark.timeout(90)
def test_cron_catchup_after_a_stop_fires_all_latest_or_none(
    sluice_up, base_env: dict[str, str], tmp_path: Path
) -> None:
    """Three every-second triggers, one per catch-up policy, and a daemon stopped (SIGTERM) for 5 s:
    after the restart, every missed second runs once (all), only the newest (latest), or none."""
    data_dir, env = tmp_path / "state", base_env | FAST_TIMINGS
    daemon = sluice_up("--agents", "0", data_dir=data_dir, env=env)
    apply(CRON + "".join(CRON_TRIGGER % {"policy": policy} for policy in POLICIES), daemon.client_env)
    for policy in POLICIES:
        wait_for(lambda policy=policy: len(cron_events(daemon.client_env, policy)) >= 3, timeout=20)

    assert daemon.stop() == 0
    stopped = datetime.now(UTC)
    time.sleep(5)
    restarted = datetime.now(UTC)
    daemon = sluice_up("--agents", "0", data_dir=data_dir, port=daemon.port, env=env)
    ready = datetime.now(UTC)
    env = daemon.client_env
    # A few regular fires after the restart, for every trigger.
    horizon = floor_second(ready) + 3 * SECOND
    for policy in POLICIES:
        wait_for(
            lambda policy=policy: any(scheduled(e) >= horizon for e in cron_events(env, policy)), timeout=20
        )

    # When the daemon put each cron trigger (and planned its catch-up from "now"): between its
    # predecessor's `cron_trigger_started` line and its own (the triggers are put one by one).
    started = [
        (line["trigger"], datetime.fromisoformat(line["timestamp"]))
        for line in daemon.log_lines("cron_trigger_started")
    ]
    assert sorted(name for name, _ in started) == [f"catchup-{policy}" for policy in POLICIES], started
    put_between = {}
    for index, (name, upper) in enumerate(started):
        lower = started[index - 1][1] if index else restarted
        put_between[name.removeprefix("catchup-")] = (lower, upper)

    runs = [run for run in api_all("/runs?pipeline=tick", env) if run["trigger"]]
    for policy in POLICIES:
        trigger = f"catchup-{policy}"
        events = cron_events(env, policy)
        assert {e["outcome"] for e in events} == {"run"}, events
        at = sorted(datetime.fromisoformat(run["params"]["at"]) for run in runs if run["trigger"] == trigger)
        assert len(at) == len(set(at)), f"{trigger}: a scheduled time with two runs"
        assert sorted(scheduled(e) for e in events) == at
        before = [scheduled(e) for e in events if datetime.fromisoformat(e["received_at"]) < stopped]
        after = [scheduled(e) for e in events if datetime.fromisoformat(e["received_at"]) > restarted]
        assert len(before) + len(after) == len(events)
        before.sort()
        after.sort()
        assert contiguous(before), f"{trigger}: one run per second before the stop: {before}"
        assert contiguous(after), f"{trigger}: one run per second after the restart: {after}"
        # Missed: the seconds after the last fire before the stop, up to the newest one, which is
        # the second the daemon's clock was in when it put the trigger (one of two, should the put
        # have straddled a second). After them the trigger fires by the clock again.
        last = before[-1]
        lower, upper = put_between[policy]
        newest = {floor_second(lower), floor_second(upper)}
        assert floor_second(restarted) - last >= 4 * SECOND  # the stop was ~5 s long
        # `after` has one run per second from its first on, so its first says what was caught up:
        # every missed second (all), only the newest (latest), or none (the first regular fire).
        first = {"all": {last + SECOND}, "latest": newest, "none": {t + SECOND for t in newest}}[policy]
        assert after[0] in first, f"{trigger}: the last run before the stop was for {last}, then {after}"
        if policy == "all":
            caught_up = [t for t in after if t <= min(newest)]
            assert len(caught_up) == (min(newest) - last) // SECOND >= 4


FILES = """
kind: Datastore
name: landing
type: local
path: %(root)s
---
kind: Pipeline
name: arrival
params:
  path: {type: string}
steps:
  - name: only
    command: ["true", "${params.path}"]
---
kind: Pipeline
name: arrivals
params:
  paths: {type: string}
steps:
  - name: only
    command: ["true", "${params.paths}"]
---
kind: Trigger
name: each-file
pipeline: arrival
on:
  files: {datastore: landing, pattern: "incoming/*.bin", settle: %(settle)s}
params:
  path: "${event.path}"
---
kind: Trigger
name: file-batches
pipeline: arrivals
on:
  files: {datastore: landing, pattern: "incoming/*.bin", settle: %(settle)s, batch: %(batch)s}
params:
  paths: "${event.paths}"
"""
SETTLE_S = 0.5
BATCH_S = 1.0
CHUNKS = 10
CHUNK_GAP_S = 0.1
"""A file is written in 10 chunks 0.1 s apart (~1 s): never still for the 0.5 s it takes to settle."""


def write_slowly(path: Path) -> datetime:
    """Write ``path`` chunk by chunk over about a second; returns when its last chunk was written."""
    with path.open("wb") as out:
        for chunk in range(CHUNKS):
            if chunk:
                time.sleep(CHUNK_GAP_S)
            out.write(bytes([chunk]) * 4096)
            out.flush()
        done = datetime.now(UTC)
    return done


def file_runs(env: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """(runs of `each-file`, runs of `file-batches`), oldest first."""
    each = [run for run in api_all("/runs?pipeline=arrival", env) if run["trigger"] == "each-file"]
    batches = [run for run in api_all("/runs?pipeline=arrivals", env) if run["trigger"] == "file-batches"]
    return each[::-1], batches[::-1]


def batch_paths(run: dict) -> list[str]:
    return json.loads(run["params"]["paths"])


def created(run: dict) -> datetime:
    return datetime.fromisoformat(run["created_at"])


@pytest.mark.timeout(90)
def test_files_written_slowly_fire_once_each_and_after_a_restart(
    sluice_up, base_env: dict[str, str], tmp_path: Path
) -> None:
    """50 files written slowly: one run each (`each-file`) and one run per 1 s window with the list
    (`file-batches`), none before its files were complete; then files added while the daemon is
    stopped fire once when it starts, and the 50 it had seen do not fire again."""
    root, data_dir, env = tmp_path / "landing", tmp_path / "state", base_env | FAST_TIMINGS
    incoming = root / "incoming"
    incoming.mkdir(parents=True)
    daemon = sluice_up("--agents", "0", data_dir=data_dir, env=env)
    apply(FILES % {"root": root, "settle": f"{SETTLE_S}s", "batch": f"{BATCH_S}s"}, daemon.client_env)

    # 50 files, each copied slowly, ten at a time.
    names = [f"incoming/part-{number:02d}.bin" for number in range(50)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        done = dict(zip(names, pool.map(write_slowly, [root / name for name in names]), strict=True))

    def all_fired() -> bool:
        each, batches = file_runs(daemon.client_env)
        return len(each) >= 50 and sum(len(batch_paths(run)) for run in batches) >= 50

    wait_for(all_fired, timeout=20, interval=0.2)
    time.sleep(SETTLE_S + BATCH_S + 0.5)  # anything more would have fired by now
    each, batches = file_runs(daemon.client_env)

    assert sorted(run["params"]["path"] for run in each) == names  # 50 runs, one per file
    for run in each:
        path = run["params"]["path"]
        waited = (created(run) - done[path]).total_seconds()
        assert waited > 0, f"{path}: run created {-waited:.3f} s before the file was complete"
        assert waited > SETTLE_S - 0.05, f"{path}: run created {waited:.3f} s after the last write"
    batched = [path for run in batches for path in batch_paths(run)]
    assert sorted(batched) == names, "every file in exactly one batch"
    assert 2 <= len(batches) < 50, [batch_paths(run) for run in batches]
    for run in batches:
        paths = batch_paths(run)
        assert paths == sorted(paths)
        assert created(run) > max(done[path] for path in paths), f"batch {paths} before a file was complete"
        # The files of one batch settled within one window (plus what settling lets them differ by).
        spread = max(done[path] for path in paths) - min(done[path] for path in paths)
        assert spread.total_seconds() < BATCH_S + SETTLE_S, (paths, spread)
    for earlier, later in itertools.pairwise(batches):
        assert (created(later) - created(earlier)).total_seconds() > BATCH_S * 0.9, "one run per window"

    # Files that arrive while no daemon runs fire once after it starts; those it saw, never again.
    assert daemon.stop() == 0
    late = [f"incoming/late-{number}.bin" for number in range(5)]
    for name in late:
        (root / name).write_bytes(b"arrived while the daemon was down")
    daemon = sluice_up("--agents", "0", data_dir=data_dir, port=daemon.port, env=env)

    def late_fired() -> bool:
        each, batches = file_runs(daemon.client_env)
        return len(each) >= 55 and sum(len(batch_paths(run)) for run in batches) >= 55

    wait_for(late_fired, timeout=20, interval=0.2)
    time.sleep(SETTLE_S + BATCH_S + 0.5)
    each_after, batches_after = file_runs(daemon.client_env)
    assert [run["id"] for run in each_after[:50]] == [run["id"] for run in each]
    assert sorted(run["params"]["path"] for run in each_after[50:]) == late
    assert [run["id"] for run in batches_after[:-1]] == [run["id"] for run in batches]
    assert batch_paths(batches_after[-1]) == late  # found together when the daemon started


JOBS = """
kind: Pipeline
name: job
params:
  n: {type: integer}
steps:
  - name: only
    command: ["true", "${params.n}"]
---
kind: Trigger
name: jobs
pipeline: job
on:
  nats: {subject: "e2e.jobs.>", stream: JOBS}
params:
  n: "${event.data.n}"
"""
MESSAGES = 1000
REPUBLISHED = 50
PUBLISH_GAP_S = 0.01
"""1,000 messages over ~10 s: long enough for two kills and restarts of the daemon while they come."""


class Publisher:
    """Publishes messages 0…999 to JetStream at a steady pace, each until the stream acknowledged it
    (a NATS server restarting under it makes publishes fail or time out: they are tried again with
    the same ``Nats-Msg-Id``). Message ``n`` of ``gates`` waits for its event: the publishing outlasts
    both kills however slowly the daemon restarts."""

    def __init__(self, js, gates: dict[int, asyncio.Event]) -> None:
        self.js = js
        self.gates = gates
        self.retries = 0

    async def publish(self, n: int) -> PubAck:
        while True:
            try:
                return await self.js.publish(
                    f"e2e.jobs.{n % 7}",
                    json.dumps({"n": n}).encode(),
                    timeout=1.0,
                    headers={"Nats-Msg-Id": f"job-{n}"},
                )
            except (nats.errors.Error, TimeoutError):
                self.retries += 1
                await asyncio.sleep(0.1)

    async def run(self) -> None:
        began = time.monotonic()
        for n in range(MESSAGES):
            if n in self.gates:
                await self.gates[n].wait()
            await asyncio.sleep(max(0.0, began + n * PUBLISH_GAP_S - time.monotonic()))
            await self.publish(n)


@pytest.mark.timeout(180)
def test_jetstream_messages_make_one_run_each_across_two_kill_9s(
    sluice_up, base_env: dict[str, str], tmp_path: Path
) -> None:
    """A `nats` trigger on the user's own stream; 1,000 messages (each with its Nats-Msg-Id) published
    while `sluice up` is killed with -9 twice and started again (its local agent dies with it, and
    the next `up` restarts its NATS server); then 50 of them published once more, past the stream's
    duplicate window. Exactly one run per message, none lost, none doubled, every run succeeds, and
    what a dead daemon held unacked is handled within 10 s of the last publish."""
    data_dir, env = tmp_path / "state", base_env | FAST_TIMINGS
    daemon = sluice_up("--agents", "1", data_dir=data_dir, env=env)
    consumer = "sluice-trigger-jobs"

    def runs_so_far() -> int:
        return len(api_all("/triggers/jobs/events", daemon.client_env))

    async def scenario() -> StreamState:
        nonlocal daemon
        # `sluice up` killed with -9 leaves its embedded NATS server running (the stream takes the
        # messages published meanwhile); the next `sluice up` restarts it on the same port.
        nc = await nats.connect(
            daemon.nats_url,
            user_credentials=str(daemon.creds("admin", "ops")),  # it makes the stream
            reconnect_time_wait=0.1,
            max_reconnect_attempts=-1,
            error_cb=ignore,
        )
        try:
            js = nc.jetstream(timeout=2.0)
            await js.add_stream(
                StreamConfig(
                    name="JOBS", subjects=["e2e.jobs.>"], storage=StorageType.FILE, duplicate_window=1.0
                )
            )
            await asyncio.to_thread(apply, JOBS, daemon.client_env)
            killed = [asyncio.Event(), asyncio.Event()]
            publisher = Publisher(js, {MESSAGES * 3 // 10: killed[0], MESSAGES * 7 // 10: killed[1]})
            publishing = asyncio.create_task(publisher.run())
            for kill in killed:
                before = await asyncio.to_thread(runs_so_far)
                # Mid-stream: once this daemon made 100 runs more.
                await asyncio.to_thread(wait_for, lambda before=before: runs_so_far() >= before + 100, 30)
                await asyncio.to_thread(daemon.kill)
                kill.set()
                await asyncio.sleep(1.0)  # messages keep coming while no daemon runs
                daemon = await asyncio.to_thread(
                    sluice_up, "--agents", "1", data_dir=data_dir, port=daemon.port, env=env
                )
            await publishing
            # The same messages again, past the stream's 1 s duplicate window: stored twice, and
            # Sluice must see them as duplicates by their Nats-Msg-Id.
            acks = [await publisher.publish(n) for n in range(REPUBLISHED)]
            assert not any(ack.duplicate for ack in acks)
            # Done when every message of the stream was delivered and acknowledged; what was in flight
            # when the daemon was killed comes back after the consumer's ack wait (5 s).
            deadline = time.monotonic() + 10
            while True:
                stream = (await js.stream_info("JOBS")).state
                info = await js.consumer_info("JOBS", consumer)
                if info.ack_floor.stream_seq == stream.last_seq and info.num_ack_pending == 0:
                    break
                assert time.monotonic() < deadline, (stream, info)
                await asyncio.sleep(0.2)
            return stream
        finally:
            await nc.close()

    stream = asyncio.run(scenario())
    assert stream.messages >= MESSAGES + REPUBLISHED
    runs = api_all("/runs?pipeline=job", daemon.client_env)
    numbers = Counter(run["params"]["n"] for run in runs)
    doubled = [n for n, count in numbers.items() if count > 1]
    assert len(runs) == MESSAGES, f"{len(runs)} runs; more than one for {doubled[:20]}"
    assert sorted(numbers) == list(range(MESSAGES)), f"missing: {sorted(set(range(MESSAGES)) - set(numbers))}"
    events = api_all("/triggers/jobs/events", daemon.client_env)
    assert sorted(event["dedupe_key"] for event in events) == sorted(f"job-{n}" for n in range(MESSAGES))
    assert {event["outcome"] for event in events} == {"run"}
    # The runs' step events, some held by a daemon when it died, are all applied too.
    wait_for(
        lambda: len(api_all("/runs?pipeline=job&status=succeeded", daemon.client_env)) == MESSAGES, timeout=90
    )


async def ignore(error: Exception) -> None:
    """nats-py's error callback: a server restarting under the client is expected here."""
