"""The web UI's pages and its access rules, over HTTP against a real scheduler, PostgreSQL and NATS
(what a browser does with them is in tests/browser)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient

from daemon.api.access import SESSION_COOKIE
from runners.protocol import Assignment
from tests.integration.fake_agent import ADMIN_TOKEN, Harness, Outcome, harness

PIPELINE = """
kind: Pipeline
name: flow
params:
  rows: {type: integer, default: 3}
steps:
  - name: extract
    command: [extract]
    outputs: [data]
  - name: train
    command: [train, "${steps.extract.outputs.data}"]
  - name: report
    command: [report]
    after: [train]
"""
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def hold(assignment: Assignment) -> Outcome:
    return Outcome(hold=True)


@pytest.fixture
async def system(pool, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(pool, nats_url, tmp_path) as system:
        yield system


def origin(client: TestClient) -> str:
    return str(client.make_url("")).rstrip("/")


async def token_with(client: TestClient, scope: str) -> str:
    response = await client.post("/api/v1/tokens", json={"name": f"ui-{scope}", "scope": scope})
    assert response.status == 201, await response.text()
    return (await response.json())["token"]


async def session_of(client: TestClient, token: str) -> str:
    """The session cookie's value after logging in with ``token`` on the login page."""
    response = await client.post(
        "/login",
        data={"token": token},
        headers={"Authorization": "", "Origin": origin(client), **FORM},
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    return response.cookies[SESSION_COOKIE].value


async def page(client: TestClient, path: str, token: str | None = None, **options) -> tuple[int, str]:
    """GET ``path`` as a browser would: logged in with ``token`` (none: no credentials)."""
    cookies = {SESSION_COOKIE: await session_of(client, token)} if token else {}
    response = await client.get(
        path, headers={"Authorization": ""}, cookies=cookies, allow_redirects=False, **options
    )
    return response.status, await response.text()


async def test_a_page_without_credentials_goes_to_the_login_page_and_back(system: Harness) -> None:
    client = system.client
    response = await client.get(
        "/runs/0123abcd?part=live", headers={"Authorization": ""}, allow_redirects=False
    )
    assert response.status == 303
    location = urlsplit(response.headers["Location"])
    assert location.path == "/login"
    assert parse_qs(location.query) == {"next": ["/runs/0123abcd?part=live"]}
    # The API itself keeps answering 401 in JSON.
    response = await client.get("/api/v1/runs", headers={"Authorization": ""})
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"


async def test_logging_in_sets_a_cookie_scripts_and_other_sites_cannot_use(system: Harness) -> None:
    client = system.client
    bad = await client.post(
        "/login",
        data={"token": "nope", "next": "/agents"},
        headers={"Authorization": "", "Origin": origin(system.client), **FORM},
    )
    assert bad.status == 401
    assert "That token is not valid" in await bad.text()
    assert SESSION_COOKIE not in bad.cookies

    good = await client.post(
        "/login",
        data={"token": ADMIN_TOKEN, "next": "/agents"},
        headers={"Authorization": "", "Origin": origin(system.client), **FORM},
        allow_redirects=False,
    )
    assert good.status == 303
    assert good.headers["Location"] == "/agents"
    cookie = good.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert ADMIN_TOKEN not in cookie  # a session id stands for the token: the token never leaves
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/" in cookie


@pytest.mark.parametrize(
    "target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "/\t/evil.example", "/\n/x"]
)
async def test_login_never_sends_a_person_to_another_site(system: Harness, target: str) -> None:
    response = await system.client.post(
        "/login",
        data={"token": ADMIN_TOKEN, "next": target},
        headers={"Authorization": "", "Origin": origin(system.client), **FORM},
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == "/"


async def test_a_change_made_with_the_cookie_needs_this_daemons_origin(system: Harness) -> None:
    await system.agent("a1", behaviour=hold)  # the run stays running: a refusal must leave it so
    await system.apply(PIPELINE)
    run_id = (await system.start_run("flow"))["run_id"]
    client = system.client
    cookies = {SESSION_COOKIE: await session_of(client, ADMIN_TOKEN)}
    cancel = f"/api/v1/runs/{run_id}/cancel"
    json_type = {"Authorization": "", "Content-Type": "application/json"}

    no_origin = await client.post(cancel, headers=json_type, cookies=cookies)
    assert no_origin.status == 403
    assert "own pages" in (await no_origin.json())["error"]["message"]
    foreign = await client.post(
        cancel, headers=json_type | {"Origin": "http://evil.example"}, cookies=cookies
    )
    assert foreign.status == 403
    form = await client.post(
        cancel, headers={"Authorization": "", "Origin": origin(client), **FORM}, cookies=cookies
    )
    assert form.status == 415
    assert (await system.get_run(run_id))["status"] == "running"

    same = await client.post(cancel, headers=json_type | {"Origin": origin(client)}, cookies=cookies)
    assert same.status == 200, await same.text()
    assert (await same.json())["status"] == "cancelled"


async def test_a_read_token_is_offered_no_action_and_may_take_none(system: Harness) -> None:
    await system.agent("a1", behaviour=hold)  # the run stays running: a refusal must leave it so
    await system.apply(PIPELINE)
    run_id = (await system.start_run("flow"))["run_id"]
    reader = await token_with(system.client, "read")
    admin_run = (await page(system.client, f"/runs/{run_id}", ADMIN_TOKEN))[1]
    assert 'id="cancel-run"' in admin_run
    assert 'id="run-again"' in admin_run

    for path in ("/", f"/runs/{run_id}", "/pipelines/flow", "/triggers", "/agents"):
        status, html = await page(system.client, path, reader)
        assert status == 200, (path, html)
        assert "token scope: <strong>read</strong>" in html
        assert 'class="action' not in html, path
        assert 'id="start-run"' not in html, path
    forged = await system.client.post(
        f"/api/v1/runs/{run_id}/cancel",
        headers={"Authorization": "", "Content-Type": "application/json", "Origin": origin(system.client)},
        cookies={SESSION_COOKIE: await session_of(system.client, reader)},
    )
    assert forged.status == 403
    assert (await system.get_run(run_id))["status"] == "running"


async def test_the_run_page_draws_the_dag_and_explains_the_steps(system: Harness) -> None:
    await system.agent("a1", datastores={"default": "/mnt/store"})
    await system.apply(PIPELINE)
    run_id = (await system.start_run("flow", params={"rows": 5}))["run_id"]
    await system.wait_run(run_id, "succeeded")

    status, html = await page(system.client, f"/runs/{run_id[:8]}", ADMIN_TOKEN)
    assert status == 200
    steps = dict(re.findall(r'<g class="step status-\w+" data-step="([a-z]+)" data-status="(\w+)"', html))
    assert steps == {"extract": "succeeded", "train": "succeeded", "report": "succeeded"}
    assert 'class="edge edge-data"' in html  # extract -> train
    assert 'class="edge edge-after"' in html  # train -> report
    assert "first run of this step" in html or "executed" in html
    assert '"rows": 5' in html

    status, live = await page(system.client, f"/runs/{run_id}?part=live", ADMIN_TOKEN)
    assert status == 200
    assert live.lstrip().startswith('<dl class="summary"')  # only the part that updates, no layout
    assert "<html" not in live

    status, html = await page(system.client, f"/runs/{run_id}/steps/train", ADMIN_TOKEN)
    assert status == 200
    assert 'id="attempts"' in html
    assert f"/api/v1/runs/{run_id}/steps/train/logs?follow=true" in html


async def test_the_run_list_filters_and_pages(system: Harness) -> None:
    await system.agent("a1")
    await system.apply(PIPELINE)
    for _ in range(3):
        await system.start_run("flow", reuse=False)
    status, html = await page(system.client, "/?pipeline=flow&status=running", ADMIN_TOKEN)
    assert status == 200
    assert html.count("<tr data-run-id=") >= 1
    status, html = await page(system.client, "/?status=failed", ADMIN_TOKEN)
    assert "No runs match these filters" in html
    status, html = await page(system.client, "/?status=exploded", ADMIN_TOKEN)
    assert status == 400
    assert "status must be one of" in html


async def test_failures_are_pages_for_people_and_json_for_programs(system: Harness) -> None:
    status, html = await page(system.client, "/runs/0123456789abcdef", ADMIN_TOKEN)
    assert status == 404
    assert html.lstrip().startswith("<!doctype html>")
    assert "no run id starts with 0123456789abcdef" in html
    status, html = await page(system.client, "/pipelines/nothing-here", ADMIN_TOKEN)
    assert status == 404
    assert "pipeline nothing-here does not exist" in html
    response = await system.client.get("/api/v1/runs/0123456789abcdef")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_the_api_document_leaves_the_pages_out(system: Harness) -> None:
    paths = (await (await system.client.get("/api/v1/openapi.json")).json())["paths"]
    assert "/api/v1/runs" in paths
    assert not [
        path
        for path in paths
        if not path.startswith("/api/") and path not in ("/healthz", "/readyz", "/metrics")
    ]


async def test_a_trigger_page_shows_its_backfills_with_their_progress(system: Harness) -> None:
    await system.agent("a1")
    await system.apply(PIPELINE)
    await system.apply(
        "kind: Trigger\nname: hourly\npipeline: flow\non: {cron: '0 * * * *', catchup: none}\n"
    )
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    body = {"from": (now - timedelta(hours=3)).isoformat(), "to": now.isoformat()}
    response = await system.client.post("/api/v1/triggers/hourly/backfills", json=body)
    assert response.status == 201, await response.text()
    backfill = await response.json()

    status, html = await page(system.client, "/triggers/hourly", ADMIN_TOKEN)
    assert status == 200
    assert f'<tr data-backfill="{backfill["id"]}"' in html
    assert "of 3" in html  # three hourly fires in the range


async def test_logging_in_needs_this_daemons_origin(system: Harness) -> None:
    response = await system.client.post(
        "/login", data={"token": ADMIN_TOKEN}, headers={"Authorization": "", **FORM}, allow_redirects=False
    )
    assert response.status == 403
    assert SESSION_COOKIE not in response.cookies


@pytest.mark.parametrize("path", ["/", "/login", "/runs/0123456789abcdef", "/api/v1/runs", "/healthz"])
async def test_no_page_may_be_framed_or_load_from_elsewhere(system: Harness, path: str) -> None:
    cookies = {SESSION_COOKIE: await session_of(system.client, ADMIN_TOKEN)}
    response = await system.client.get(path, cookies=cookies, allow_redirects=False)
    assert response.headers["X-Frame-Options"] == "DENY"
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_session_ends_at_logout_or_when_its_token_is_revoked(system: Harness) -> None:
    client = system.client
    for ending in ("logout", "revoke"):
        token = await token_with(client, "read") if ending == "revoke" else ADMIN_TOKEN
        session = await session_of(client, token)
        cookies = {SESSION_COOKIE: session}
        response = await client.get("/agents", headers={"Authorization": ""}, cookies=cookies)
        assert response.status == 200
        assert session != token
        assert (
            await client.get(
                "/agents",
                headers={"Authorization": ""},
                cookies={SESSION_COOKIE: token},
                allow_redirects=False,
            )
        ).status == 303  # a token is no session id
        if ending == "logout":
            headers = {"Authorization": "", "Origin": origin(client), **FORM}
            response = await client.post("/logout", headers=headers, cookies=cookies, allow_redirects=False)
            assert response.status == 303
        else:
            response = await client.post("/api/v1/tokens/ui-read/revoke")
            assert response.status == 200, await response.text()
        # A copy of the cookie kept elsewhere opens nothing any more.
        response = await client.get(
            "/agents", headers={"Authorization": ""}, cookies=cookies, allow_redirects=False
        )
        assert response.status == 303
        assert response.headers["Location"].startswith("/login")
