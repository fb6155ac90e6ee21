"""A closed API with bounded input, against `sluice up` as a user (or an attacker's web page) meets
it: tokens and scopes, the browser protections, body and parameter limits, numbers out of range."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import nats
import pytest

from tests.e2e.sluice import HELLO, SluiceUp, api_all, apply, cli, wait_for

pytestmark = pytest.mark.e2e


LIMITS = {"SLUICE_PARAMS_MAX_BYTES": "4Ki", "SLUICE_API_MAX_BODY": "64Ki"}


def call(
    sluice: SluiceUp,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    token: str | None = "admin",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict]:
    """One request as a browser or curl would send it; ``token`` "admin" is the data dir's."""
    if token == "admin":
        token = (sluice.data_dir / "credentials" / "api-token").read_text().strip()
    sent = dict(headers or {})
    if token:
        sent.setdefault("Authorization", f"Bearer {token}")
    request = urllib.request.Request(f"{sluice.api_url}{path}", data=body, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


JSON = {"Content-Type": "application/json"}


def documents(text: str) -> bytes:
    return json.dumps({"documents": [{"file": "p.yaml", "text": text}]}).encode()


@pytest.fixture
def sluice(sluice_up, base_env: dict[str, str]) -> SluiceUp:
    up = sluice_up(env=base_env | LIMITS)
    apply(HELLO, up.client_env)
    return up


def test_a_web_page_cannot_publish_or_run(sluice: SluiceUp) -> None:
    evil = "kind: Pipeline\nname: evil\nsteps:\n  - name: own\n    command: [sh, -c, 'id > /tmp/x']\n"
    plain = {"Content-Type": "text/plain"}

    assert call(sluice, "POST", "/api/v1/apply", documents(evil), token=None, headers=plain)[0] == 401
    assert call(sluice, "POST", "/api/v1/apply", documents(evil), headers=plain)[0] == 415
    cross = {**JSON, "Origin": "http://evil.example"}
    status, body = call(sluice, "POST", "/api/v1/pipelines/hello/runs", b"{}", headers=cross)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    rebound = {**JSON, "Host": f"evil.example:{sluice.api_url.rsplit(':', 1)[1]}"}
    status, body = call(sluice, "POST", "/api/v1/pipelines/hello/runs", b"{}", headers=rebound)
    assert (status, body["error"]["code"]) == (421, "misdirected")
    assert call(sluice, "GET", "/api/v1/pipelines", headers={"Origin": sluice.api_url})[0] == 200
    assert [item["name"] for item in api_all("/pipelines", sluice.client_env)] == ["hello"]
    assert api_all("/runs", sluice.client_env) == []


def test_tokens_have_scopes_and_can_be_revoked(sluice: SluiceUp) -> None:
    env = sluice.client_env
    tokens = {}
    for scope in ("read", "run", "publish"):
        made = cli("tokens", "create", f"t-{scope}", "--scope", scope, env=env)
        assert made.returncode == 0, made.stderr
        tokens[scope] = made.stdout.strip()

    assert call(sluice, "GET", "/api/v1/runs", token=None)[0] == 401
    assert call(sluice, "GET", "/api/v1/runs", token="slc_wrong")[0] == 401
    assert call(sluice, "GET", "/api/v1/runs", token=tokens["read"])[0] == 200
    status, body = call(
        sluice, "POST", "/api/v1/pipelines/hello/runs", b"{}", token=tokens["read"], headers=JSON
    )
    assert status == 403
    assert "run scope" in body["error"]["message"]
    assert (
        call(sluice, "POST", "/api/v1/pipelines/hello/runs", b"{}", token=tokens["run"], headers=JSON)[0]
        == 201
    )
    status, body = call(sluice, "POST", "/api/v1/apply", documents(HELLO), token=tokens["run"], headers=JSON)
    assert (status, "publish scope" in body["error"]["message"]) == (403, True)
    assert (
        call(sluice, "POST", "/api/v1/apply", documents(HELLO), token=tokens["publish"], headers=JSON)[0]
        == 200
    )
    new_token = json.dumps({"name": "sneaky", "scope": "admin"}).encode()
    assert call(sluice, "POST", "/api/v1/tokens", new_token, token=tokens["publish"], headers=JSON)[0] == 403
    creds = json.dumps({"name": "sneaky", "role": "admin"}).encode()
    assert call(sluice, "POST", "/api/v1/credentials", creds, token=tokens["publish"], headers=JSON)[0] == 403
    for method, path in (("GET", "/api/v1/credentials"), ("GET", "/api/v1/tokens")):
        assert call(sluice, method, path, token=tokens["publish"])[0] == 403
    revoke = "/api/v1/credentials/local/revoke"
    assert call(sluice, "POST", revoke, b"{}", token=tokens["run"], headers=JSON)[0] == 403
    for probe in ("/healthz", "/readyz", "/metrics"):
        request = urllib.request.Request(f"{sluice.api_url}{probe}")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    assert cli("tokens", "revoke", "t-run", env=env).returncode == 0
    assert call(sluice, "GET", "/api/v1/runs", token=tokens["run"])[0] == 401
    listed = {item["name"]: item for item in json.loads(cli("tokens", "--json", env=env).stdout)["items"]}
    assert (listed["t-run"]["status"], listed["t-read"]["status"]) == ("revoked", "active")
    assert all("token" not in item for item in listed.values())


def test_input_is_bounded_on_every_way_in(sluice: SluiceUp, tmp_path) -> None:
    env = sluice.client_env
    huge = "x" * 5000  # over the 4 KiB SLUICE_PARAMS_MAX_BYTES of this daemon
    apply(
        """
kind: Trigger
name: bus
pipeline: hello
on:
  nats: {subject: "bounded.in"}
params:
  who: "${event.data.who}"
""",
        env,
    )

    status, body = call(
        sluice,
        "POST",
        "/api/v1/pipelines/hello/runs",
        json.dumps({"params": {"who": huge}}).encode(),
        headers=JSON,
    )
    assert status == 422
    assert body["error"]["details"][0]["path"] == "params.who"
    assert "more than the 4096 allowed" in body["error"]["message"]
    padding = json.dumps({"documents": [{"file": "p.yaml", "text": "#" * 70_000}]}).encode()
    assert call(sluice, "POST", "/api/v1/apply", padding, headers=JSON)[0] == 413

    async def over_nats() -> dict:
        nc = await nats.connect(sluice.nats_url, user_credentials=sluice.service_creds)
        try:
            reply = await nc.request(
                "sluice.submit.hello", json.dumps({"params": {"who": huge}}).encode(), timeout=10
            )
            await nc.publish("bounded.in", json.dumps({"who": huge}).encode())
            await nc.flush()
            return json.loads(reply.data)
        finally:
            await nc.drain()

    reply = asyncio.run(over_nats())
    assert "params.who" in reply["error"]["message"]
    events = wait_for(lambda: api_all("/triggers/bus/events", env), timeout=15)
    assert events[0]["outcome"] == "rejected"
    assert "params.who" in events[0]["reason"]
    assert "more than the 4096 allowed" in events[0]["reason"]
    assert api_all("/runs", env) == []


def test_numbers_out_of_range_are_client_errors(sluice: SluiceUp) -> None:
    assert call(sluice, "GET", "/api/v1/pipelines/hello/versions/2147483648")[0] == 404
    too_big = json.dumps({"version": 99999999999}).encode()
    assert call(sluice, "POST", "/api/v1/pipelines/hello/runs", too_big, headers=JSON)[0] == 400
    assert call(sluice, "PUT", "/api/v1/pipelines/hello/default", too_big, headers=JSON)[0] == 400
    assert call(sluice, "GET", "/api/v1/runs?limit=99999999999")[0] == 400
    result = cli("run", "hello", "--version", "99999999999", env=sluice.client_env)
    assert result.returncode == 2
    assert "at most 2147483647" in result.stderr
