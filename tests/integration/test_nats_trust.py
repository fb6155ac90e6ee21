"""Trust on the bus against a real NATS server in operator mode, configured as the embedded one is:
the server itself refuses what each role may not do, and a revocation cuts a user off."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import ObjectStoreConfig

from daemon.runtime.embedded import EmbeddedNats
from daemon.trust import authority, claims, permissions
from daemon.trust.authority import Trust
from daemon.trust.permissions import ServiceGrant
from kit.nats import AGENT_TAG, BusError, NatsOptions, connect, raw_credentials
from kit.streams import ensure_steps_stream
from kit.subjects import SOURCES_BUCKET
from runners.protocol import DAEMON_INBOX, agent_inbox
from runners.snapshots import fetch_source

WAIT_S = 5.0


@dataclasses.dataclass
class Secured:
    trust: Trust
    url: str
    creds_dir: Path

    def creds(self, name: str, grant: claims.Permissions, tags: tuple[str, ...] = ()) -> str:
        path = self.creds_dir / f"{name}-{time.monotonic_ns()}.creds"
        path.write_text(self.trust.user(name, grant, tags)[1])
        return str(path)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    trust = authority.new_trust()
    server = EmbeddedNats(tmp_path_factory.mktemp("secured-nats"), trust=(trust.server_config, trust.account))
    url = server.start()
    yield Secured(trust, url, tmp_path_factory.mktemp("creds"))
    server.stop()


class Client:
    """A NATS connection that records the permission violations the server reports to it."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.nc: NATS | None = None

    async def connect(self, url: str, creds: str | None, **options: object) -> Client:
        async def on_error(exc: Exception) -> None:
            self.violations.append(str(exc))

        self.nc = await nats.connect(url, user_credentials=creds, error_cb=on_error, **options)
        return self

    async def refused(self, subject: str) -> bool:
        """Whether the server refused something on ``subject`` (reports arrive within a round trip)."""
        assert self.nc is not None
        await self.nc.flush()
        await asyncio.sleep(0.05)
        return any(f'"{subject.lower()}"' in violation for violation in self.violations)


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        if client.nc is not None and not client.nc.is_closed:
            await client.nc.close()


async def open_as(clients: list[Client], secured: Secured, creds: str | None, **options: object) -> NATS:
    client = await Client().connect(secured.url, creds, **options)
    clients.append(client)
    assert client.nc is not None
    return client.nc


def client_of(clients: list[Client], nc: NATS) -> Client:
    return next(client for client in clients if client.nc is nc)


async def test_a_client_without_credentials_is_refused_at_once(secured: Secured) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secured.url, allow_reconnect=False, connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(BusError, match="refused our credentials"):
        await connect(NatsOptions(secured.url), name="stranger")
    assert time.monotonic() - started < 5.0  # no retrying for the whole first-connect bound


async def test_an_agent_does_its_work_and_nothing_of_another_agent(
    secured: Secured, clients: list[Client]
) -> None:
    daemon = await open_as(
        clients, secured, secured.creds("daemon", permissions.daemon()), inbox_prefix=DAEMON_INBOX
    )
    js = daemon.jetstream()
    await ensure_steps_stream(js)
    bucket = await js.create_object_store(SOURCES_BUCKET, config=ObjectStoreConfig(bucket=SOURCES_BUCKET))
    snapshot = bytes(range(256)) * 16 * 1024  # 4 MiB: the ordered consumer asks for flow control
    await bucket.put("sha256:feed", snapshot)
    creds_a = secured.creds("a", permissions.agent("a"), (AGENT_TAG,))
    agent = await open_as(clients, secured, creds_a, inbox_prefix=agent_inbox("a"))
    agent_js = agent.jetstream()

    async def accept(msg) -> None:
        await msg.respond(b"accepted")

    await agent.subscribe("sluice.agents.a.assign", cb=accept)
    await agent.flush()

    assert (await daemon.request("sluice.agents.a.assign", b"{}", timeout=WAIT_S)).data == b"accepted"
    ack = await agent_js.publish("sluice.steps.a.1.started", b"{}", headers={"Nats-Msg-Id": "a.1.started"})
    assert ack.stream == "SLUICE_STEPS"
    assert await fetch_source(agent_js, "sha256:feed") == snapshot
    await agent.publish("sluice.agents.a.heartbeat", b"{}")
    await agent.publish("sluice.logs.a.run.step", b"{}")
    assert not client_of(clients, agent).violations

    await agent.publish("sluice.agents.b.heartbeat", b"{}")
    await agent.publish("sluice.steps.b.1.finished", b"{}")
    await agent.publish("sluice.agents.b.assign", b"{}")
    await agent.publish(f"{DAEMON_INBOX}.stolen", b"{}")
    await agent.publish("$JS.API.STREAM.DELETE.SLUICE_STEPS", b"")
    await agent.subscribe("sluice.agents.b.assign")
    await agent.subscribe("sluice.steps.>")
    watcher = client_of(clients, agent)
    for subject in (
        "sluice.agents.b.heartbeat",
        "sluice.steps.b.1.finished",
        "sluice.agents.b.assign",
        f"{DAEMON_INBOX}.stolen",
        "$JS.API.STREAM.DELETE.SLUICE_STEPS",
        "sluice.steps.>",
    ):
        assert await watcher.refused(subject), subject


async def test_a_service_submits_and_follows_its_pipelines_and_publishes_its_subjects(
    secured: Secured, clients: list[Client]
) -> None:
    daemon = await open_as(
        clients, secured, secured.creds("daemon", permissions.daemon()), inbox_prefix=DAEMON_INBOX
    )
    received: list[str] = []

    async def answer(msg) -> None:
        received.append(msg.subject)
        if msg.reply:
            await msg.respond(b'{"run_id": "r1"}')

    await daemon.subscribe("sluice.submit.*", cb=answer)
    await daemon.subscribe("scoring.requests.>", cb=answer)
    await daemon.flush()
    grant = ServiceGrant(submit=("scoring",), follow=("scoring",), publish=("scoring.requests.>",))
    service = await open_as(clients, secured, secured.creds("svc", permissions.service(grant)))
    follow = await service.subscribe("sluice.runs.scoring.>")

    assert (await service.request("sluice.submit.scoring", b"{}", timeout=WAIT_S)).data == b'{"run_id": "r1"}'
    await service.publish("scoring.requests.team-a", b"{}")
    await daemon.publish("sluice.runs.scoring.succeeded", b"{}")
    assert (await follow.next_msg(timeout=WAIT_S)).subject == "sluice.runs.scoring.succeeded"
    await asyncio.sleep(0.1)
    assert received == ["sluice.submit.scoring", "scoring.requests.team-a"]

    await service.publish("sluice.submit.training", b"{}")
    await service.publish("sluice.agents.local.assign", b'{"argv": ["sh", "-c", "id"]}')
    await service.publish("sluice.steps.local.1.finished", b"{}")
    await service.publish("sluice.agents.evil-gpu.heartbeat", b"{}")
    await service.publish("$JS.API.STREAM.CREATE.GRAB", b"{}")
    await service.subscribe("sluice.runs.training.>")
    await service.subscribe(f"{DAEMON_INBOX}.>")
    watcher = client_of(clients, service)
    for subject in (
        "sluice.submit.training",
        "sluice.agents.local.assign",
        "sluice.steps.local.1.finished",
        "sluice.agents.evil-gpu.heartbeat",
        "$JS.API.STREAM.CREATE.GRAB",
        "sluice.runs.training.>",
        f"{DAEMON_INBOX}.>",
    ):
        assert await watcher.refused(subject), subject


async def test_a_revoked_user_is_cut_off_at_once_and_refused_after(secured: Secured) -> None:
    seed = claims.new_seed("user")
    public = claims.public_key(seed)
    token = claims.user_jwt(
        secured.trust.record.signing_seed,
        user=public,
        name="doomed",
        account=secured.trust.account,
        permissions=permissions.agent("doomed"),
    )
    creds = raw_credentials(claims.creds(token, seed))
    closed = asyncio.Event()
    reasons: list[str] = []

    def on_closed(reason: str) -> None:
        reasons.append(reason)
        closed.set()

    doomed = await connect(NatsOptions(secured.url, creds=creds), name="doomed", on_closed=on_closed)
    record = dataclasses.replace(
        secured.trust.record,
        account_jwt=claims.account_jwt(
            secured.trust.record.operator_seed,
            claims.Account(
                authority.ACCOUNT,
                secured.trust.account,
                signing_keys=[claims.public_key(secured.trust.record.signing_seed)],
                jetstream=True,
                revocations={public: int(time.time())},
            ),
        ),
    )
    started = time.monotonic()

    await authority.push(NatsOptions(secured.url), Trust(record))
    await asyncio.wait_for(closed.wait(), WAIT_S)

    assert time.monotonic() - started < WAIT_S
    assert "revoked" in reasons[0]
    assert doomed.is_closed
    with pytest.raises(BusError, match="refused our credentials"):
        await connect(NatsOptions(secured.url, creds=creds), name="doomed", first_timeout_s=WAIT_S)


async def test_streams_of_an_open_embedded_server_become_sluices_account(tmp_path: Path) -> None:
    """A data dir from before its NATS was closed keeps its source snapshots and step events."""
    store_dir = tmp_path / "nats"
    open_server = EmbeddedNats(store_dir)
    nc = await nats.connect(open_server.start())
    try:
        bucket = await nc.jetstream().create_object_store(
            SOURCES_BUCKET, config=ObjectStoreConfig(bucket=SOURCES_BUCKET)
        )
        await bucket.put("sha256:cafe", b"snapshot")
    finally:
        await nc.close()
        open_server.stop()
    trust = authority.new_trust()
    closed_server = EmbeddedNats(store_dir, trust=(trust.server_config, trust.account))
    url = closed_server.start()
    try:
        daemon = await connect(
            NatsOptions(url, creds=raw_credentials(trust.daemon_creds())), name="d", inbox_prefix=DAEMON_INBOX
        )
        try:
            assert await fetch_source(daemon.jetstream(), "sha256:cafe") == b"snapshot"
        finally:
            await daemon.close()
    finally:
        closed_server.stop()
