"""Manual runs over HTTP: creation rules, listing, logs and the event stream (real PostgreSQL, NATS)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.fake_agent import Harness, Outcome, harness

HELLO = """
kind: Pipeline
name: hello
params:
  who: {type: string}
  times: {type: integer, default: 1}
steps:
  - name: greet
    command: [echo, "${params.who}"]
"""


@pytest.fixture
async def system(pool, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(pool, nats_url, tmp_path) as system:
        await system.apply(HELLO)
        yield system


async def test_idempotency_key_returns_the_same_run(system: Harness) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await system.start_run("hello", params={"who": "a"}, headers=headers)
    again = await system.start_run("hello", expect=200, params={"who": "a"}, headers=headers)
    assert again["run_id"] == first["run_id"]
    other = await system.start_run("hello", params={"who": "a"})
    assert other["run_id"] != first["run_id"]


async def test_params_are_validated(system: Harness) -> None:
    body = await system.start_run("hello", expect=422, params={"times": "x", "nope": 1})
    paths = sorted(detail["path"] for detail in body["error"]["details"])
    assert paths == ["params.nope", "params.times", "params.who"]
    assert body["error"]["code"] == "invalid"
    created = await system.start_run("hello", params={"who": "b"})
    assert created["params"] == {"who": "b", "times": 1}


async def test_unknown_disabled_and_bad_requests(system: Harness) -> None:
    assert (await system.start_run("nope", expect=404, params={}))["error"]["code"] == "not_found"
    assert (await system.start_run("hello", expect=404, version=9, params={"who": "a"}))["error"][
        "message"
    ] == ("pipeline hello has no version 9")
    await system.apply(HELLO.replace("echo", "printf"))  # version 2 becomes the default
    response = await system.client.patch("/api/v1/pipelines/hello/versions/1", json={"status": "disabled"})
    assert response.status == 200
    body = await system.start_run("hello", expect=409, version=1, params={"who": "a"})
    assert "disabled" in body["error"]["message"]
    assert (await system.start_run("hello", params={"who": "a"}))["version"] == 2
    client = system.client
    response = await client.post("/api/v1/pipelines/hello/runs", data=b"{not json")
    assert response.status == 400
    response = await client.post("/api/v1/pipelines/hello/runs", json={"param": {}})
    assert response.status == 400
    assert (await client.get("/api/v1/runs/not-a-uuid")).status == 404
    assert (await client.get("/api/v1/runs?status=weird")).status == 400
    assert (await client.get("/api/v1/runs?cursor=%%%")).status == 400
    assert (await client.post("/api/v1/runs/00000000-0000-0000-0000-000000000000/cancel")).status == 404


async def test_a_run_is_found_by_a_unique_prefix_of_its_id(system: Harness, pool) -> None:
    run_id = (await system.start_run("hello", params={"who": "a"}))["run_id"]
    for prefix in (run_id[:8], run_id[:13], run_id[:8].upper()):
        response = await system.client.get(f"/api/v1/runs/{prefix}")
        assert response.status == 200, prefix
        assert (await response.json())["id"] == run_id
    assert (await system.client.get(f"/api/v1/runs/{run_id[:7]}")).status == 404
    twin = run_id[:8] + "-0000-4000-8000-000000000000"
    if twin != run_id:
        copy = "INSERT INTO runs (id, pipeline, version) SELECT $1, pipeline, version FROM runs WHERE id = $2"
        await pool.execute(copy, twin, run_id)
        ambiguous = await system.client.get(f"/api/v1/runs/{run_id[:8]}")
        assert ambiguous.status == 400
        assert "several run ids" in (await ambiguous.json())["error"]["message"]
    unknown = "0" * 8 if not run_id.startswith("0" * 8) else "f" * 8
    assert (await system.client.get(f"/api/v1/runs/{unknown}")).status == 404


async def test_list_filters_and_pages(system: Harness) -> None:
    ids = [(await system.start_run("hello", params={"who": str(n)}))["run_id"] for n in range(3)]
    response = await system.client.get("/api/v1/runs?pipeline=hello&limit=2")
    page = await response.json()
    assert [item["id"] for item in page["items"]] == ids[::-1][:2]
    assert page["next_cursor"]
    rest = await (
        await system.client.get(f"/api/v1/runs?pipeline=hello&limit=2&cursor={page['next_cursor']}")
    ).json()
    assert [item["id"] for item in rest["items"]] == [ids[0]]
    assert rest["next_cursor"] is None
    queued = await (await system.client.get("/api/v1/runs?status=succeeded")).json()
    assert queued["items"] == []


async def test_concurrency_queue_holds_runs_until_a_slot_frees(system: Harness) -> None:
    agent = await system.agent("a1", behaviour=lambda a: Outcome(hold=True))
    await system.apply(HELLO.replace("name: hello", "name: limited") + "concurrency: {max_active_runs: 1}\n")
    first = (await system.start_run("limited", params={"who": "a"}))["run_id"]
    second = await system.start_run("limited", params={"who": "b"})
    assert second["held"] is True
    await system.wait_for(lambda: len(agent.assignments) == 1, what="first assigned")
    await asyncio.sleep(0.2)
    assert len(agent.assignments) == 1  # the second waits for a slot
    await agent.finish(agent.assignments[0].attempt_id)
    await system.wait_run(first, "succeeded")
    await system.wait_for(lambda: len(agent.assignments) == 2, what="second assigned")
    await agent.finish(agent.assignments[1].attempt_id)
    await system.wait_run(second["run_id"], "succeeded")


async def test_concurrency_skip_refuses_a_run(system: Harness) -> None:
    await system.apply(
        HELLO.replace("name: hello", "name: skipper") + "concurrency: {max_active_runs: 1, on_limit: skip}\n"
    )
    await system.start_run("skipper", params={"who": "a"})
    body = await system.start_run("skipper", expect=409, params={"who": "b"})
    assert "max_active_runs 1" in body["error"]["message"]


async def test_a_stale_cached_default_does_not_decide_the_limit(system: Harness) -> None:
    """A run of "the default version" is judged by the default as the store has it: another daemon
    may have moved it since this one cached it (here, the row is changed under the API)."""
    limited = HELLO.replace("name: hello", "name: moving")
    await system.apply(limited + "concurrency: {max_active_runs: 1, on_limit: skip}\n")
    first = await system.start_run("moving", params={"who": "a"})  # no agent: it holds the slot
    assert first["version"] == 1
    await system.apply(limited.replace("echo", "printf"))  # version 2, without a limit
    await system.pool.execute("UPDATE pipelines SET default_version = 2 WHERE name = 'moving'")
    second = await system.start_run("moving", params={"who": "b"})
    assert (second["version"], second["held"]) == (2, False)


async def test_logs_read_and_followed(system: Harness, tmp_path: Path) -> None:
    agent = await system.agent("a1", behaviour=lambda a: Outcome(hold=True))
    run_id = (await system.start_run("hello", params={"who": "a"}))["run_id"]
    await system.wait_step(run_id, "greet", lambda step: step["status"] == "running")
    log = tmp_path / "default" / "runs" / run_id / "greet" / "logs" / "attempt-1.log"
    log.parent.mkdir(parents=True)
    log.write_text("one\ntwo\n")
    response = await system.client.get(f"/api/v1/runs/{run_id}/steps/greet/logs")
    assert response.status == 200
    assert await response.text() == "one\ntwo\n"
    assert (await system.client.get(f"/api/v1/runs/{run_id}/steps/nope/logs")).status == 404
    assert (await system.client.get(f"/api/v1/runs/{run_id}/steps/greet/logs?attempt=5")).status == 404

    follow = await system.client.get(f"/api/v1/runs/{run_id}/steps/greet/logs?follow=true")
    assert follow.headers["Content-Type"].startswith("text/event-stream")
    events = []

    async def read() -> None:
        event = None
        async for raw in follow.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))

    reader = asyncio.create_task(read())
    await system.wait_for(lambda: len(events) == 2, what="existing lines")
    with log.open("a") as handle:
        handle.write("three\n")
    await system.wait_for(lambda: len(events) == 3, what="a live line")
    await agent.finish(agent.assignments[0].attempt_id)
    await asyncio.wait_for(reader, 10)
    assert events == [
        ("line", {"attempt": 1, "stream": "stdout", "line": "one"}),
        ("line", {"attempt": 1, "stream": "stdout", "line": "two"}),
        ("line", {"attempt": 1, "stream": "stdout", "line": "three"}),
        ("end", {"status": "succeeded"}),
    ]


async def test_event_stream_follows_one_run(system: Harness) -> None:
    await system.agent("a1")
    response = await system.client.get("/api/v1/events")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    run_id = (await system.start_run("hello", params={"who": "a"}))["run_id"]
    seen: list[tuple[str, dict]] = []

    async def read() -> None:
        event = None
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                seen.append((event, data))
                if event == "run" and data["status"] == "succeeded":
                    return

    await asyncio.wait_for(read(), 10)
    runs = [data["status"] for kind, data in seen if kind == "run" and data["id"] == run_id]
    steps = [data["status"] for kind, data in seen if kind == "step" and data["run_id"] == run_id]
    # a1 was free: the run's step was placed as the run was created, which started it.
    assert runs == ["running", "succeeded"]
    assert steps == ["dispatched", "running", "succeeded"]
    response.close()
