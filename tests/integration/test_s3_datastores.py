"""The daemon's side of ``s3`` datastores against a real S3 endpoint (moto_server), real PostgreSQL and
NATS, with fake agents that publish outputs as real ones do (files, then the manifest): fingerprints
from listings and contents, placement on agents with a staging directory, reuse only of published
outputs, and logs read from the store."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from posixpath import relpath
from uuid import uuid4

import obstore
import pytest
import structlog

from daemon.errors import Unavailable
from daemon.planning.contexts import Datastores
from daemon.planning.data_fingerprints import MISSING, DataFingerprints, DataUnreadable
from daemon.planning.reuse_planner import ReusePlanner
from daemon.planning.store_fingerprints import StoreFingerprints
from daemon.rules.partitions import Partition
from daemon.rules.reuse import Decision, Origin
from kit.objectstore import Manifest, ManifestFile, encode_manifest, manifest_key, open_store, published
from runners.protocol import Assignment
from tests.integration.fake_agent import FakeAgent, Harness, Outcome, harness
from tests.s3 import S3Endpoint

PIPELINE = """
kind: Pipeline
name: flow
params:
  day: {type: string}
steps:
  - name: prep
    command: [prep, "${inputs.raw}", "${outputs.features}"]
    inputs:
      raw: {datastore: landing, path: "days/${params.day}"}
    outputs: [features]
  - name: score
    command: [score, "${inputs.features}", "${inputs.listed}"]
    inputs:
      features: ${steps.prep.outputs.features}
      listed: {datastore: landing, path: "days/${params.day}", mode: uri}
    outputs: [scores]
"""


async def put(store, key: str, data: bytes) -> None:
    await obstore.put_async(store, key, data)


# --- fingerprints ---------------------------------------------------------------------------------


async def test_a_listing_fingerprint_changes_with_a_rewritten_object_only(s3: S3Endpoint) -> None:
    location = s3.location(s3.make_bucket("fingerprint-listing"), "landing")
    store = open_store(location, s3.env())
    await put(store, "days/mon/a.csv", b"id\n1\n")
    await put(store, "days/mon/sub/b.csv", b"id\n2\n")
    await put(store, "days/monday.csv", b"not under days/mon/")
    prints = StoreFingerprints(environ=s3.env())

    first = await prints.of(location, "days/mon")
    assert first.startswith("sha256:")
    assert await prints.of(location, "days/mon") == first  # unchanged: the same

    await put(store, "days/mon/a.csv", b"id\n9\n")  # same size, new bytes: a new ETag
    rewritten = await prints.of(location, "days/mon")
    assert rewritten != first

    await put(store, "days/tue/other.csv", b"x")  # elsewhere: no change here
    assert await prints.of(location, "days/mon") == rewritten
    assert await prints.of(location, "days/wed") == MISSING
    single = await prints.of(location, "days/mon/a.csv")  # one object, as a file
    assert single not in (MISSING, rewritten)
    burst = await asyncio.gather(*(prints.of(location, "days/mon") for _ in range(20)))
    assert set(burst) == {rewritten}  # calls at once share one computation


async def test_a_content_fingerprint_reads_each_object_once_and_ignores_a_rewrite_of_the_same_bytes(
    s3: S3Endpoint,
) -> None:
    location = s3.location(s3.make_bucket("fingerprint-content"))
    store = open_store(location, s3.env())
    for index in range(5):
        await put(store, f"in/{index}.csv", f"row {index}\n".encode())
    prints = StoreFingerprints(environ=s3.env(), concurrency=2)

    first = await prints.of(location, "in", content=True)
    assert prints.cached_objects == 5
    assert await prints.of(location, "in", content=True) == first
    assert prints.cached_objects == 5  # served from the cache: nothing new read

    await put(store, "in/0.csv", b"row 0\n")  # rewritten with the same bytes: new ETag, same digest
    assert await prints.of(location, "in", content=True) == first
    assert first != await prints.of(location, "in")  # listing and content never match

    await put(store, "in/0.csv", b"row 7\n")
    assert await prints.of(location, "in", content=True) != first


async def test_an_unset_credential_variable_is_named_without_a_secret(s3: S3Endpoint) -> None:
    location = s3.location(s3.make_bucket("fingerprint-unset"))

    with pytest.raises(DataUnreadable) as raised:
        await StoreFingerprints(environ={}).of(location, "in")

    assert raised.value.message == (
        "cannot read s3://fingerprint-unset/in: bucket fingerprint-unset: environment variable "
        "TEST_S3_KEY_ID is not set"
    )


# --- runs on s3 datastores ----------------------------------------------------------------------


def publishes(s3: S3Endpoint):
    """A fake agent's behaviour: each output gets a file, then its manifest, in the default store."""

    def behave(assignment: Assignment) -> Outcome:
        location = assignment.stores["default"]
        store = open_store(location, s3.env())
        root = assignment.datastores["default"]
        for path in assignment.outputs.values():
            output = relpath(path, root)
            data = f"{assignment.step} of {assignment.run_id}\n".encode()
            put = obstore.put(store, f"{output}/part.csv", data)
            entry = ManifestFile(
                path="part.csv", size=len(data), e_tag=put["e_tag"], sha256=hashlib.sha256(data).hexdigest()
            )
            manifest = Manifest(files=[entry], attempt=assignment.number)
            obstore.put(store, manifest_key(output), encode_manifest(manifest))
        return Outcome()

    return behave


@pytest.fixture
async def system(
    pool, nats_url: str, tmp_path, s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    for variable, value in s3.env().items():
        monkeypatch.setenv(variable, value)  # the daemon's environment: it reads the stores too
    runs, landing = s3.make_bucket("daemon-runs"), s3.make_bucket("daemon-landing")
    await put(open_store(s3.location(landing, "in"), s3.env()), "days/mon/a.csv", b"id\n1\n")
    async with harness(pool, nats_url, tmp_path) as system:
        await system.apply(
            s3.datastore_document("default", runs, "sluice")
            + "---\n"
            + s3.datastore_document("landing", landing, "in")
        )
        await system.apply(PIPELINE)
        assert system.scheduler is not None
        await system.scheduler.datastores.refresh(pool)
        yield system


async def run(system: Harness, status: str = "succeeded") -> dict:
    created = await system.start_run("flow", params={"day": "mon"})
    return await system.wait_run(created["run_id"], status)


def steps_of(run: dict) -> dict[str, dict]:
    return {step["name"]: step for step in run["steps"]}


async def test_a_step_on_an_s3_datastore_waits_for_an_agent_with_staging(system: Harness) -> None:
    await system.agent("plain")
    created = await system.start_run("flow", params={"day": "mon"})

    step = await system.wait_step(created["run_id"], "prep", lambda step: step["waiting_reason"])

    assert (
        step["waiting_reason"] == "it uses an s3 datastore: no matching agent has a staging directory for one"
    )


async def test_runs_on_s3_datastores_reuse_only_published_outputs(system: Harness, s3: S3Endpoint) -> None:
    agent: FakeAgent = await system.agent("staged", staging="/stage", behaviour=publishes(s3))
    first = await run(system)

    prep, score = agent.assignments
    assert prep.datastores["landing"] == f"/stage/{first['id']}/prep/landing"
    assert prep.inputs == {"raw": f"/stage/{first['id']}/prep/landing/days/mon"}
    assert set(prep.stores) == {"default", "landing"}
    assert score.argv[2] == "s3://daemon-landing/in/days/mon"  # mode: uri
    assert set(score.stores) == {"default"}
    assert score.inputs["features"] == f"/stage/{first['id']}/score/default/runs/{first['id']}/prep/features"
    outputs = steps_of(first)["prep"]["outputs"]
    assert outputs == {"features": f"s3://daemon-runs/sluice/runs/{first['id']}/prep/features"}

    second = await run(system)
    assert [step["status"] for step in second["steps"]] == ["reused", "reused"]

    # The manifest gone, leftovers of the files there: not published, so score runs again.
    store = open_store(s3.location("daemon-runs", "sluice"), s3.env())
    await obstore.delete_async(store, manifest_key(f"runs/{first['id']}/score/scores"))
    third = await run(system)
    assert steps_of(third)["prep"]["status"] == "reused"
    assert steps_of(third)["score"]["reuse"]["reason"] == (
        f"unchanged since run {first['id']}, but the outputs of its step score are gone"
    )

    # A rewritten object in the landing datastore: its readers run again.
    await put(open_store(s3.location("daemon-landing", "in"), s3.env()), "days/mon/a.csv", b"id\n2\n")
    fourth = await run(system)
    assert steps_of(fourth)["prep"]["reuse"]["changed"] == ["input raw"]
    assert steps_of(fourth)["score"]["status"] == "succeeded"


async def test_logs_are_read_and_followed_from_the_store(system: Harness, s3: S3Endpoint) -> None:
    agent = await system.agent("staged", staging="/stage", behaviour=lambda _: Outcome(hold=True))
    created = await system.start_run("flow", params={"day": "mon"})
    run_id = created["run_id"]
    await system.wait_step(run_id, "prep", lambda step: step["status"] == "running")
    client = system.client
    assert client is not None

    empty = await client.get(f"/api/v1/runs/{run_id}/steps/prep/logs")
    assert (empty.status, await empty.text()) == (200, "")  # not uploaded yet: nothing so far

    store = open_store(s3.location("daemon-runs", "sluice"), s3.env())
    key = f"runs/{run_id}/prep/logs/attempt-1.log"
    await put(store, key, b"first line\nsecond")
    whole = await client.get(f"/api/v1/runs/{run_id}/steps/prep/logs")
    assert await whole.text() == "first line\nsecond"

    following = await client.get(f"/api/v1/runs/{run_id}/steps/prep/logs?follow=1")
    assert following.status == 200
    await put(store, key, b"first line\nsecond line\nthird\n")  # the agent uploads the grown log
    [attempt] = list(agent.running)
    await agent.finish(attempt)
    body = (await following.text()).split("\n\n")
    lines = [
        json.loads(event.split("data: ", 1)[1])["line"] for event in body if event.startswith("event: line")
    ]
    assert lines[0] == "first line"
    assert "third" in lines
    assert body[-2].startswith("event: end")


FANNED = """
kind: Pipeline
name: fanned
steps:
  - name: score
    command: [score, "${item.files}", "${outputs.out}"]
    inputs:
      raw: {datastore: landing, path: batch}
    outputs: [out]
    foreach: {files: {input: raw, pattern: "*.csv"}}
  - name: report
    command: [report, "${inputs.scores}"]
    inputs:
      scores: ${steps.score.outputs.out}
"""


async def test_reused_partitions_are_published_in_the_new_runs_output(
    system: Harness, s3: S3Endpoint
) -> None:
    landing = open_store(s3.location("daemon-landing", "in"), s3.env())
    for name in ("a", "b"):
        await put(landing, f"batch/{name}.csv", name.encode())
    await system.apply(FANNED)
    agent = await system.agent("staged", staging="/stage", behaviour=publishes(s3))
    created = await system.start_run("fanned")
    await system.wait_run(created["run_id"], "succeeded")

    await put(landing, "batch/c.csv", b"c")
    second = await system.start_run("fanned")
    await system.wait_run(second["run_id"], "succeeded")

    ran = [a.step for a in agent.assignments if a.run_id == second["run_id"]]
    assert ran == ["score[2]", "report"]
    runs = open_store(s3.location("daemon-runs", "sluice"), s3.env())
    files = await published(runs, f"runs/{second['run_id']}/score/out")
    assert sorted(files or {}) == ["part-00000/part.csv", "part-00001/part.csv", "part-00002/part.csv"]
    copied = await obstore.get_async(runs, f"runs/{second['run_id']}/score/out/part-00000/part.csv")
    assert bytes(await copied.bytes_async()) == f"score[0] of {created['run_id']}\n".encode()


async def test_a_reused_partition_deleted_before_its_copy_is_not_published_empty(s3: S3Endpoint) -> None:
    # Reuse checked the partition's output was published; if it is gone by the copy, the new run's
    # partition was published with an empty manifest, so downstream steps silently read nothing.
    location = s3.location(s3.make_bucket("copy-gone"), "sluice")
    datastores = Datastores()
    datastores.stores = {"default": location}
    planner = ReusePlanner(datastores, DataFingerprints(), StoreFingerprints(environ=s3.env()))
    origin = Origin(1, uuid4(), "score[0]", {"out": location.uri("runs/old/score/out/part-00000")})
    decision = Decision("sha256:x", {}, origin, {}, partition=Partition(0))

    with pytest.raises(Unavailable, match="runs/old/score/out/part-00000 is no longer published"):
        await planner.link_reused(uuid4(), {"score[0]": decision})
    store = open_store(location, s3.env())
    assert await published(store, "runs") is None


async def test_an_unchecked_reuse_logs_one_line_of_the_store_error(s3: S3Endpoint) -> None:
    # str() of an obstore error goes on with a debug dump of the request and the response body (an
    # S3 SignatureDoesNotMatch body quotes the canonical request, session token header included).
    location = s3.location("no-such-bucket", "sluice")
    datastores = Datastores()
    datastores.stores = {"default": location}
    planner = ReusePlanner(datastores, DataFingerprints(), StoreFingerprints(environ=s3.env()))
    origin = Origin(7, uuid4(), "prep", {"f": location.uri("runs/old/prep/f")})

    with structlog.testing.capture_logs() as logged:
        assert await planner._outputs_present([origin]) == {7: False}

    [entry] = [entry for entry in logged if entry["event"] == "reuse_outputs_unchecked"]
    assert "\n" not in entry["reason"]
    assert "404" in entry["reason"]
