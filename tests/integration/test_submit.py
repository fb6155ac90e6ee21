"""``sluice.submit.<pipeline>`` request/reply against real PostgreSQL and NATS, and a service that
follows ``sluice.runs.<pipeline>.*`` for the outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest

from tests.integration.fake_agent import Harness, harness

PIPELINE = """
kind: Pipeline
name: scoring
params:
  date: {type: string}
  rows: {type: integer, default: 10}
steps:
  - name: score
    command: [score, "${params.date}", "${params.rows}"]
"""


@pytest.fixture
async def system(pool, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(pool, nats_url, tmp_path) as system:
        await system.apply(PIPELINE)
        yield system


@pytest.fixture
async def service(nats_url: str):
    """Another service's own NATS connection."""
    nc = await nats.connect(nats_url, name="service")
    yield nc
    await nc.drain()


async def test_a_reply_subject_that_is_not_an_inbox_gets_no_reply_and_no_run(
    system: Harness, service
) -> None:
    """Else a service could make the daemon publish on any subject it may: a trigger's, an agent's."""
    hijacked = await service.subscribe("orders.created")
    body = msgspec.json.encode({"params": {"date": "d"}})

    await service.publish("sluice.submit.scoring", body, reply="orders.created")
    await service.flush()
    await asyncio.sleep(0.3)

    with pytest.raises(nats.errors.TimeoutError):
        await hijacked.next_msg(timeout=0.2)
    assert (await system.client.get("/api/v1/runs")).status == 200
    assert (await (await system.client.get("/api/v1/runs")).json())["items"] == []


async def submit(nc, pipeline: str, body: bytes | dict) -> dict:
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    reply = await nc.request(f"sluice.submit.{pipeline}", data, timeout=5)
    return msgspec.json.decode(reply.data)


async def test_submit_replies_with_the_run_id_and_a_follower_sees_the_outcome(
    system: Harness, service
) -> None:
    seen: list[tuple[str, dict]] = []
    done = asyncio.Event()

    async def follow(msg) -> None:
        seen.append((msg.subject, msgspec.json.decode(msg.data)))
        if msg.subject.endswith(".succeeded"):
            done.set()

    await service.subscribe("sluice.runs.scoring.*", cb=follow)
    await service.flush()
    agent = await system.agent("a1")

    reply = await submit(service, "scoring", {"params": {"date": "2024-05-01", "rows": 3}})
    run_id = reply["run_id"]
    assert reply["created"] is True
    assert reply["version"] == 1

    await asyncio.wait_for(done.wait(), 10)
    mine = [(subject, run) for subject, run in seen if run["id"] == run_id]
    assert [subject for subject, _ in mine] == [
        "sluice.runs.scoring.running",
        "sluice.runs.scoring.succeeded",
    ]
    assert mine[-1][1]["params"] == {"date": "2024-05-01", "rows": 3}
    assert mine[-1][1]["finished_at"] is not None
    assert agent.assignments[0].argv == ["score", "2024-05-01", "3"]


async def test_idempotency_key_gives_the_same_run(system: Harness, service) -> None:
    body = {"params": {"date": "d"}, "idempotency_key": "order-17"}
    first, second = await asyncio.gather(submit(service, "scoring", body), submit(service, "scoring", body))
    assert first["run_id"] == second["run_id"]
    assert sorted([first["created"], second["created"]]) == [False, True]
    assert await system.pool.fetchval("SELECT count(*) FROM runs") == 1


@pytest.mark.parametrize(
    ("pipeline", "body", "code", "words"),
    [
        ("scoring", b"not json", "bad_request", "not valid JSON"),
        ("scoring", b'{"params": {"date": "d"}, "colour": 1}', "bad_request", "colour"),
        ("scoring", {"params": {"date": "d"}, "version": 0}, "bad_request", "`int` >= 1 - at `$.version`"),
        ("scoring", {"params": {"rows": "many"}}, "invalid", "params"),
        ("scoring", {"params": {"date": "d"}, "version": 9}, "not_found", "no version 9"),
        ("nothing", {"params": {}}, "not_found", "nothing"),
    ],
)
async def test_bad_requests_get_an_error_reply(system: Harness, service, pipeline, body, code, words) -> None:
    reply = await submit(service, pipeline, body)
    assert reply["error"]["code"] == code, reply
    assert words in reply["error"]["message"]
    assert await system.pool.fetchval("SELECT count(*) FROM runs") == 0
    # The subscription lives on.
    assert "run_id" in await submit(service, "scoring", {"params": {"date": "d"}})


async def test_invalid_params_name_each_problem(system: Harness, service) -> None:
    reply = await submit(service, "scoring", {"params": {"rows": "many", "colour": "red"}})
    paths = {detail["path"] for detail in reply["error"]["details"]}
    assert paths == {"params.rows", "params.colour", "params.date"}
