"""Files triggers on buckets: the files source against a real S3 endpoint (moto_server) and real
NATS, with an in-test sink; then the daemon's trigger manager, restarted in the middle."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from daemon.store import catalog
from kit.objectstore import S3Location
from tests.integration.fake_agent import harness
from tests.integration.test_files_source import States, eventually
from tests.s3 import S3Endpoint
from triggers.base import EventResult, TriggerConfig, TriggerError, TriggerEvent
from triggers.files import FilesSource
from triggers.files.bucket import BucketTrigger
from triggers.specs import FilesSource as FilesSpec

SETTLE = 0.3
_buckets = itertools.count()


class Sink:
    """Records events with the time they arrived."""

    def __init__(self) -> None:
        self.events: list[TriggerEvent] = []
        self.times: list[float] = []

    async def __call__(self, event: TriggerEvent) -> EventResult:
        self.events.append(event)
        self.times.append(time.monotonic())
        return EventResult(event_id=len(self.events), outcome="run", run_id=f"run-{len(self.events)}")

    def seen(self) -> list[tuple[str, str]]:
        return [(event.fields["path"], event.fields["kind"]) for event in self.events]


class Bucket:
    """A fresh bucket; the datastore is its ``landing`` prefix."""

    def __init__(self, s3: S3Endpoint) -> None:
        self.name = s3.make_bucket(f"trigger-{next(_buckets)}-{int(time.time() * 1000) % 100000}")
        self.client = s3.client()
        self.location = s3.location(self.name, "landing")

    def put(self, key: str, body: bytes = b"data") -> str:
        """Writes ``key`` under the datastore; its ETag, unquoted."""
        answer = self.client.put_object(Bucket=self.name, Key=f"landing/{key}", Body=body)
        return answer["ETag"].strip('"')

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=f"landing/{key}")


@pytest.fixture
def bucket(s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return Bucket(s3)


@contextlib.asynccontextmanager
async def running(sink: Sink, states: States, nc: Any = None, **knobs: float) -> AsyncIterator[FilesSource]:
    source = FilesSource(nc, **({"save_interval": 0.05} | knobs))
    async with contextlib.AsyncExitStack() as stack:
        await source.start(stack, sink, states)
        yield source


def config(location: S3Location, state: dict[str, Any] | None = None, **spec: Any) -> TriggerConfig:
    spec = {
        "datastore": "landing",
        "pattern": "incoming/**/*.csv",
        "settle": SETTLE,
        "poll_interval": 0.2,
    } | spec
    return TriggerConfig(
        name="arrivals", on=msgspec.convert(spec, FilesSpec), location=location, state=state or {}
    )


def watched(source: FilesSource) -> BucketTrigger:
    trigger = source._triggers["arrivals"]
    assert isinstance(trigger, BucketTrigger)
    return trigger


async def test_polled_objects_fire_once_each_after_they_settle(bucket: Bucket) -> None:
    before = bucket.put("incoming/2026-12-01/a.csv")
    sink, states = Sink(), States()
    async with running(sink, states) as source:
        await source.put(config(bucket.location))
        put_at: dict[str, float] = {}
        tags = {"incoming/2026-12-01/a.csv": before}
        for key in (
            "incoming/2026-12-02/b.csv",
            "incoming/2026-12-02/c.csv",
            "incoming/x.txt",
            "other/d.csv",
        ):
            tags[key] = bucket.put(key)
            put_at[key] = time.monotonic()
        await eventually(lambda: len(sink.events) == 3)
        await asyncio.sleep(SETTLE + 0.5)
        status = source.status("arrivals")

    assert sorted(sink.seen()) == [
        ("incoming/2026-12-01/a.csv", "created"),
        ("incoming/2026-12-02/b.csv", "created"),
        ("incoming/2026-12-02/c.csv", "created"),
    ]
    for event, at in zip(sink.events, sink.times, strict=True):
        path = event.fields["path"]
        assert event.dedupe_key == f"{path}:{tags[path]}"
        assert event.fields == {"datastore": "landing", "path": path, "paths": [path], "kind": "created"}
        if path in put_at:
            assert at >= put_at[path] + SETTLE - 0.1, path  # the server had it a little before put returned
    assert status == {"watch": "s3", "pending": 0, "error": None, "objects": 3, "notifications": None}
    assert states.saved["arrivals"] == {"objects": {path: [tags[path], 4] for path, _ in sink.seen()}}


async def test_an_object_being_rewritten_fires_only_once_it_is_stable(bucket: Bucket) -> None:
    sink, states = Sink(), States()
    async with running(sink, states) as source:
        await source.put(config(bucket.location, settle=1.0))
        await asyncio.sleep(0.3)
        for i in range(10):  # a new ETag every 0.15 s for 1.5 s: never still for a whole settle
            last = bucket.put("incoming/growing.csv", b"x" * (i + 1))
            last_at = time.monotonic()
            await asyncio.sleep(0.15)
            assert sink.events == [], f"fired while still changing (write {i})"
        await eventually(lambda: len(sink.events) == 1)
        await asyncio.sleep(1.0)

    [event] = sink.events
    assert event.dedupe_key == f"incoming/growing.csv:{last}"
    assert sink.times[0] >= last_at + 1.0 - 0.1


async def test_a_rewritten_object_fires_modified_once_and_a_deleted_one_deleted(bucket: Bucket) -> None:
    sink, states = Sink(), States()
    first = bucket.put("incoming/a.csv", b"one")
    bucket.put("incoming/b.csv", b"two")
    async with running(sink, states, rescan_interval=0.5) as source:
        await source.put(config(bucket.location, events=["created", "modified", "deleted"]))
        await eventually(lambda: len(sink.events) == 2)
        second = bucket.put("incoming/a.csv", b"one, rewritten")
        bucket.delete("incoming/b.csv")
        await eventually(lambda: len(sink.events) == 4)
        await asyncio.sleep(1.5)  # several full listings more: nothing new

    assert sorted(sink.seen()[2:]) == [("incoming/a.csv", "modified"), ("incoming/b.csv", "deleted")]
    keys = {event.fields["path"] + event.fields["kind"]: event.dedupe_key for event in sink.events}
    assert keys["incoming/a.csvcreated"] == f"incoming/a.csv:{first}"
    assert keys["incoming/a.csvmodified"] == f"incoming/a.csv:{second}"
    assert keys["incoming/b.csvdeleted"].startswith("incoming/b.csv:deleted:")
    assert len(sink.events) == 4


async def test_a_restart_neither_misses_nor_repeats_objects(bucket: Bucket) -> None:
    sink, states = Sink(), States()
    for key in ("incoming/m.csv", "incoming/n.csv"):
        bucket.put(key)
    async with running(sink, states) as source:
        await source.put(config(bucket.location))
        await eventually(lambda: len(sink.events) == 2)
    saved = states.saved["arrivals"]
    assert sorted(saved["objects"]) == ["incoming/m.csv", "incoming/n.csv"]

    # While no source runs: a key sorting before every key seen, one after, and a rewrite.
    bucket.put("incoming/a.csv")
    bucket.put("incoming/z.csv")
    rewritten = bucket.put("incoming/n.csv", b"new content")
    async with running(sink, states) as source:
        await source.put(config(bucket.location, state=saved))
        await eventually(lambda: len(sink.events) == 5)
        bucket.put("incoming/zz.csv")  # found by an incremental listing
        await eventually(lambda: len(sink.events) == 6)
        await asyncio.sleep(SETTLE + 0.6)
        requests = watched(source).requests

    assert sorted(sink.seen()[2:]) == [
        ("incoming/a.csv", "created"),
        ("incoming/n.csv", "modified"),
        ("incoming/z.csv", "created"),
        ("incoming/zz.csv", "created"),
    ]
    assert len({event.dedupe_key for event in sink.events}) == 6
    assert f"incoming/n.csv:{rewritten}" in {event.dedupe_key for event in sink.events}
    assert requests < 40  # one LIST a poll and a HEAD per settling object, not a listing per object


def s3_event(bucket: str, key: str, etag: str, size: int, name: str = "s3:ObjectCreated:Put") -> bytes:
    """An S3 event notification as MinIO's NATS target publishes it (keys URL-encoded)."""
    from urllib.parse import quote_plus

    record = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "eventName": name,
        "s3": {
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag, "sequencer": "17"},
        },
    }
    return json.dumps({"EventName": name, "Key": f"{bucket}/{key}", "Records": [record]}).encode()


async def test_a_notification_fires_the_object_before_the_next_poll_and_once(
    bucket: Bucket, nats_url: str
) -> None:
    nc = await nats.connect(nats_url, connect_timeout=5)
    subject = f"minio.events.{bucket.name}"
    sink, states = Sink(), States()
    try:
        async with running(sink, states, nc) as source:
            spec = {"poll_interval": 60.0, "notifications": {"subject": subject}}
            await source.put(config(bucket.location, **spec))
            trigger = watched(source)
            await eventually(lambda: trigger.after is None and trigger.requests >= 1)  # the first listing
            await asyncio.sleep(0.2)
            key = "incoming/day one/a+b.csv"
            etag = bucket.put(key, b"12345")
            await nc.publish(subject, b"not json")
            await nc.publish(subject, s3_event("another-bucket", f"landing/{key}", etag, 5))
            await nc.publish(subject, s3_event(bucket.name, "landing/incoming/never-written.csv", "abc", 3))
            sent = time.monotonic()
            await nc.publish(subject, s3_event(bucket.name, f"landing/{key}", etag, 5))
            await nc.flush()
            await eventually(lambda: len(sink.events) == 1, within=5)
            fired = sink.times[0] - sent
            await nc.publish(subject, s3_event(bucket.name, f"landing/{key}", etag, 5))  # again: no news
            await trigger.full_poll()  # the poll that would have found it
            await asyncio.sleep(SETTLE + 0.5)
            status = source.status("arrivals")
    finally:
        await nc.close()

    [event] = sink.events
    assert event.fields["path"] == key
    assert event.dedupe_key == f"{key}:{etag}"
    assert SETTLE - 0.05 <= fired < 5
    assert status["notifications"] == subject
    assert status["error"] is None


async def test_missing_credentials_refuse_the_trigger_naming_the_variable(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_S3_SECRET")
    sink, states = Sink(), States()
    async with running(sink, states) as source:
        with pytest.raises(TriggerError) as refused:
            await source.put(config(bucket.location))
    assert str(refused.value) == (
        f"trigger arrivals: bucket {bucket.name}: environment variable TEST_S3_SECRET is not set"
    )


async def test_notifications_on_a_directory_are_refused(tmp_path: Path) -> None:
    sink, states = Sink(), States()
    spec = FilesSpec(datastore="landing", pattern="*.csv", notifications={"subject": "minio.events"})
    async with running(sink, states) as source:
        with pytest.raises(TriggerError, match="notifications are for buckets, and datastore landing is a"):
            await source.put(TriggerConfig(name="dir", on=spec, root=str(tmp_path)))


PIPELINE = """
kind: Pipeline
name: ingest
params:
  key: {type: string}
steps:
  - name: only
    command: [ingest, "${params.key}"]
"""

TRIGGER = """
kind: Trigger
name: arrivals
pipeline: ingest
on:
  files: {datastore: landing, pattern: "incoming/*.csv", settle: 0.2s, poll_interval: 0.2s}
params:
  key: "${event.path}"
"""


async def test_the_daemon_runs_a_bucket_trigger_across_a_restart(
    pool, nats_url: str, tmp_path: Path, bucket: Bucket, capfd: pytest.CaptureFixture[str]
) -> None:
    await catalog.upsert_datastore(pool, "landing", "s3", msgspec.to_builtins(bucket.location))

    async def runs() -> list[str]:
        rows = await pool.fetch("SELECT params->>'key' AS key FROM runs WHERE trigger = 'arrivals'")
        return sorted(row["key"] for row in rows)

    async def status(system) -> dict:
        response = await system.client.get("/api/v1/triggers/arrivals")
        return (await response.json())["status"]

    bucket.put("incoming/a.csv")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    async with harness(pool, nats_url, tmp_path / "one") as system:
        await system.apply(PIPELINE + "---" + TRIGGER)
        await system.wait_for(lambda: runs(), what="a run")
        bucket.put("incoming/b.csv")
        await system.wait_for(lambda: _count(runs, 2), what="two runs")
        bucket.put("incoming/c-settling.csv")  # seen, maybe, but not settled when the daemon stops
        await asyncio.sleep(0.25)
    bucket.put("incoming/0-while-down.csv")
    async with harness(pool, nats_url, tmp_path / "two") as system:
        await system.wait_for(lambda: _count(runs, 4), what="four runs")
        await asyncio.sleep(1.0)
        assert (await status(system))["objects"] == 4
        # Credentials gone: the trigger says why, naming the variable, once it is put again.
        with pytest.MonkeyPatch.context() as env:
            env.delenv("TEST_S3_KEY_ID")
            await system.apply(TRIGGER.replace("0.2s}", "0.3s}"))
            problem = (await status(system))["error"]
    assert await runs() == [
        "incoming/0-while-down.csv",
        "incoming/a.csv",
        "incoming/b.csv",
        "incoming/c-settling.csv",
    ]
    assert (
        problem == f"trigger arrivals: bucket {bucket.name}: environment variable TEST_S3_KEY_ID is not set"
    )
    logs = "".join(capfd.readouterr())
    assert "trigger_not_watched" in logs
    assert "TEST_S3_KEY_ID is not set" in logs
    assert "sluice-test-secret" not in logs


async def _count(runs: Callable[[], Any], n: int) -> bool:
    return len(await runs()) >= n
