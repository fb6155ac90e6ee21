"""No secret reaches a log line: passwords in the NATS and database URLs, a step's env values and
the API token stay out of what `sluice up` (daemon and local agent) and `sluice agent` write."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from daemon.runtime.embedded import EmbeddedNats
from tests.e2e.sluice import SluiceAgent, apply, cli, wait_for

pytestmark = pytest.mark.e2e

SECRET = "s3cret-7f1c"
PIPELINE = f"""
kind: Pipeline
name: tells
steps:
  - name: work
    command: [sh, -c, "test -n \\"$API_KEY\\""]
    env: {{API_KEY: "env-{SECRET}"}}
    selector: {{who: outside}}
"""


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` for its user (the test servers trust any password)."""
    scheme, rest = url.split("://", 1)
    if "@" in rest:
        user, host = rest.split("@", 1)
        return f"{scheme}://{user.split(':', 1)[0] or 'postgres'}:{password}@{host}"
    return f"{scheme}://sluice:{password}@{rest}"


@pytest.fixture
def database(pg_admin_url: str) -> str:
    name = f"secrets_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        admin = await asyncpg.connect(pg_admin_url)
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()

    asyncio.run(create())
    base, _, query = pg_admin_url.partition("?")
    return base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


def test_no_secret_reaches_a_log(sluice_up, database: str, base_env: dict[str, str], tmp_path: Path) -> None:
    nats_server = EmbeddedNats(tmp_path / "nats")  # without auth: it takes any user and password
    nats_url = with_password(nats_server.start(), f"nats-{SECRET}")
    try:
        env = base_env | {
            "SLUICE_NATS_URL": nats_url,
            "SLUICE_DATABASE_URL": with_password(database, f"db-{SECRET}"),
            "SLUICE_API_TOKEN": f"api-{SECRET}",
        }
        up = sluice_up(env=env)
        outside = SluiceAgent(
            "outside",
            env,
            tmp_path / "agent",
            tmp_path / "agent.log",
            "--labels",
            "who=outside",
            "--gpus",
            "0",
        ).start(up.client_env)
        apply(PIPELINE, up.client_env)
        result = cli("run", "tells", "--wait", env=up.client_env, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        bad_url = cli("runs", env=up.client_env | {"SLUICE_API_URL": with_password(up.api_url, SECRET)})
        outside.stop()
        up.stop()
    finally:
        nats_server.stop()

    logs = {"up": "".join(up.output), "agent": (tmp_path / "agent.log").read_text(), "cli": bad_url.stderr}
    wait_for(lambda: "agent_stopped" in logs["agent"], timeout=1)
    assert "daemon_ready" in logs["up"]
    assert "attempt_finished" in logs["agent"]
    for name, text in logs.items():
        assert SECRET not in text, f"the {name} log shows a secret:\n{text[-3000:]}"
