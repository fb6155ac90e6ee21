"""The HTTP API against real PostgreSQL and NATS: contract shapes, and never a 500 for bad input."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from daemon.api import make_app
from daemon.api.access import AccessSettings
from daemon.runtime import bus
from kit.nats import NatsOptions
from tests.integration.fake_agent import ACCESS, AS_ADMIN

PIPELINE = """
kind: Pipeline
name: hello
params:
  who: {type: string, default: world}
steps:
  - name: greet
    command: [echo, "hello ${params.who}"]
"""


@pytest.fixture
async def client(pool, nats_url: str) -> AsyncIterator[TestClient]:
    nc = await bus.connect(NatsOptions(nats_url))
    sources = await bus.SourceStore.open(nc)
    app = make_app(pool=pool, nc=nc, sources=sources, access=ACCESS)
    async with TestClient(TestServer(app), headers=AS_ADMIN) as client:
        yield client
    await nc.drain()


async def apply(client: TestClient, text: str, **extra) -> dict:
    response = await client.post(
        "/api/v1/apply", json={"documents": [{"file": "p.yaml", "text": text}], **extra}
    )
    assert response.status == 200, await response.text()
    return await response.json()


async def test_apply_publishes_then_is_idempotent(client: TestClient) -> None:
    assert (await apply(client, PIPELINE))["items"] == [
        {"kind": "Pipeline", "name": "hello", "action": "published", "version": 1}
    ]
    assert (await apply(client, PIPELINE))["items"] == [
        {"kind": "Pipeline", "name": "hello", "action": "unchanged", "version": 1}
    ]

    version = await (await client.get("/api/v1/pipelines/hello/versions/1")).json()
    assert version["pipeline"] == "hello"
    assert version["version"] == 1
    assert version["is_default"] is True
    assert version["digest"].startswith("sha256:")
    assert version["status"] == "active"
    assert version["spec"]["steps"][0]["name"] == "greet"


async def test_post_pipelines_takes_yaml(client: TestClient) -> None:
    response = await client.post(
        "/api/v1/pipelines", data=PIPELINE, headers={"Content-Type": "application/yaml"}
    )
    assert response.status == 201, await response.text()
    assert (await response.json())["version"] == 1
    again = await client.post(
        "/api/v1/pipelines", data=PIPELINE, headers={"Content-Type": "application/yaml"}
    )
    assert again.status == 200


async def test_invalid_documents_are_422_with_file_line_and_path(client: TestClient) -> None:
    response = await client.post(
        "/api/v1/apply",
        json={
            "documents": [
                {
                    "file": "bad.yaml",
                    "text": (
                        "kind: Pipeline\nname: x\nsteps:\n  - name: a\n    command: [echo]\n    colour: red\n"
                    ),
                }
            ]
        },
    )
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"]
    assert error["message"]
    (detail,) = error["details"]
    assert detail["file"] == "bad.yaml"
    assert detail["line"] == 6
    assert "steps[0]" in detail["path"]


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


TRIGGER = """
kind: Trigger
name: nightly
pipeline: hello
on: {cron: "0 2 * * *", timezone: Europe/Madrid}
params: {who: "${event.scheduled_date}"}
"""


async def test_triggers_are_upserted_listed_paused_and_show_their_events(client: TestClient, pool) -> None:
    await apply(client, PIPELINE)
    assert (await apply(client, TRIGGER))["items"] == [
        {"kind": "Trigger", "name": "nightly", "action": "created"}
    ]
    assert (await apply(client, TRIGGER))["items"][0]["action"] == "unchanged"
    moved = TRIGGER.replace("0 2 * * *", "30 2 * * *")
    assert (await apply(client, moved))["items"][0]["action"] == "updated"

    trigger = await (await client.post("/api/v1/triggers/nightly/pause")).json()
    assert trigger["paused"] is True
    assert trigger["source"] == "cron"
    assert trigger["spec"]["on"] == {"source": "cron", "cron": "30 2 * * *", "timezone": "Europe/Madrid",
                                     "catchup": "latest"}  # fmt: skip
    listed = await (await client.get("/api/v1/triggers")).json()
    assert [item["name"] for item in listed["items"]] == ["nightly"]

    for day in ("2026-11-21", "2026-11-22", "2026-11-23"):
        await pool.execute(
            "INSERT INTO events (trigger, dedupe_key, fields, outcome, reason) VALUES ($1, $2, $3, $4, $5)",
            "nightly", f"cron:{day}", {"scheduled_date": day}, "skipped", "trigger paused",
        )  # fmt: skip
    first = await (await client.get("/api/v1/triggers/nightly/events?limit=2")).json()
    assert [event["fields"]["scheduled_date"] for event in first["items"]] == ["2026-11-23", "2026-11-22"]
    assert first["items"][0]["outcome"] == "skipped"
    rest = await (await client.get(f"/api/v1/triggers/nightly/events?cursor={first['next_cursor']}")).json()
    assert [event["dedupe_key"] for event in rest["items"]] == ["cron:2026-11-21"]
    assert rest["next_cursor"] is None


async def test_a_source_upload_must_match_its_digest(client: TestClient) -> None:
    wrong = "sha256:" + "0" * 64
    response = await client.put(
        f"/api/v1/sources/{wrong}",
        data=_tar({"a.py": b"print(1)\n"}),
        headers={"Content-Type": "application/x-tar"},
    )
    assert response.status == 422
    assert (await client.head(f"/api/v1/sources/{wrong}")).status == 404


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/apply", b"not json"),
        ("POST", "/api/v1/apply", b'{"documents": 3}'),
        ("POST", "/api/v1/apply", b'{"documents": [{"file": "x", "text": "kind: [unclosed"}]}'),
        ("POST", "/api/v1/apply", b'{"documents": [{"file": "x", "text": "- just\\n- a list"}]}'),
        ("POST", "/api/v1/apply", b""),
        ("POST", "/api/v1/pipelines", b"\xff\xfe"),
        ("PUT", "/api/v1/pipelines/hello/default", b'{"version": "two"}'),
        ("PUT", "/api/v1/pipelines/hello/default", b'{"version": 99}'),
        ("PUT", "/api/v1/pipelines/nope/default", b'{"version": 1}'),
        ("PATCH", "/api/v1/pipelines/hello/versions/1", b'{"status": "retired"}'),
        ("PATCH", "/api/v1/pipelines/hello/versions/abc", b'{"status": "active"}'),
        ("PATCH", "/api/v1/pipelines/hello/versions/0", b'{"status": "active"}'),
        ("GET", "/api/v1/pipelines/hello/versions/-1", None),
        ("GET", "/api/v1/pipelines?limit=0", None),
        ("GET", "/api/v1/pipelines?limit=x", None),
        ("GET", "/api/v1/pipelines?cursor=%%%", None),
        ("GET", "/api/v1/pipelines?cursor=NQ==", None),
        ("GET", "/api/v1/pipelines/hello/versions?cursor=Ingi", None),
        ("GET", "/api/v1/triggers/nope/events", None),
        ("GET", "/api/v1/pipelines/nope", None),
        ("GET", "/api/v1/pipelines/nope/versions", None),
        ("GET", "/api/v1/triggers/nope", None),
        ("POST", "/api/v1/triggers/nope/pause", None),
        ("DELETE", "/api/v1/triggers/nope", None),
        ("PUT", "/api/v1/sources/not-a-digest", b"x"),
        ("PUT", f"/api/v1/sources/sha256:{'a' * 64}", b"not a tar archive"),
        ("GET", "/api/v1/no/such/route", None),
        ("DELETE", "/api/v1/pipelines", None),
    ],
)
async def test_bad_input_is_a_4xx_envelope_never_a_500(
    client: TestClient, method: str, path: str, body: bytes | None
) -> None:
    await apply(client, PIPELINE)
    response = await client.request(method, path, data=body, headers={"Content-Type": "application/json"})
    assert 400 <= response.status < 500, await response.text()
    error = (await response.json())["error"]
    assert isinstance(error["code"], str)
    assert error["message"]
    assert isinstance(error["details"], list)


async def test_a_token_guards_everything_but_the_probes(pool, nats_url: str) -> None:
    nc = await bus.connect(NatsOptions(nats_url))
    access = AccessSettings(admin_token="s3cret")
    app = make_app(pool=pool, nc=nc, sources=await bus.SourceStore.open(nc), access=access)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/api/v1/pipelines")).status == 401
        ok = await client.get("/api/v1/pipelines", headers={"Authorization": "Bearer s3cret"})
        assert ok.status == 200
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
        assert (await client.get("/metrics")).status == 200
    await nc.drain()


async def test_openapi_lists_the_routes(client: TestClient) -> None:
    document = await (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    assert "post" in document["paths"]["/api/v1/apply"]
    assert "put" in document["paths"]["/api/v1/pipelines/{name}/default"]


LANDING = """
kind: Datastore
name: landing
type: local
path: /data/landing
"""


async def test_only_admin_creates_or_changes_a_datastore(client: TestClient) -> None:
    created = await client.post("/api/v1/tokens", json={"name": "publisher", "scope": "publish"})
    publisher = {"Authorization": f"Bearer {(await created.json())['token']}"}

    def body(*texts: str) -> dict:
        return {"documents": [{"file": f"d{index}.yaml", "text": text} for index, text in enumerate(texts)]}

    refused = await client.post("/api/v1/apply", json=body(PIPELINE, LANDING), headers=publisher)
    assert refused.status == 403
    assert "Datastore landing" in (await refused.json())["error"]["message"]
    # Nothing of the batch was applied.
    assert (await client.get("/api/v1/pipelines/hello")).status == 404
    assert "landing" not in await datastore_paths(client)

    assert (await apply(client, LANDING))["items"][0]["action"] == "created"
    restated = await client.post("/api/v1/apply", json=body(PIPELINE, LANDING), headers=publisher)
    assert restated.status == 200, await restated.text()
    moved = LANDING.replace("/data/landing", "/")
    changed = await client.post("/api/v1/apply", json=body(moved), headers=publisher)
    assert changed.status == 403
    assert (await datastore_paths(client))["landing"] == "/data/landing"


async def datastore_paths(client: TestClient) -> dict[str, str]:
    listed = await (await client.get("/api/v1/datastores")).json()
    return {item["name"]: item.get("path") for item in listed["items"]}
