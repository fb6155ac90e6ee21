"""Sluice's streams, consumer and source bucket on a three-server NATS cluster take
``SLUICE_NATS_REPLICAS``: made with it, brought to a new count on an existing installation (and back),
refused with the remedy named when the cluster is too small; a trigger's consumer on a user's stream
has the stream's replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from daemon.dispatch.step_events import StepEvents
from daemon.errors import Unavailable
from daemon.runtime.bus import SourceStore
from daemon.runtime.bus import connect as connect_daemon
from kit import streams
from kit.nats import NatsOptions
from kit.streams import STEPS_CONSUMER, trigger_consumer
from kit.subjects import SOURCES_STREAM, STEPS_STREAM
from tests.nats_cluster import NatsCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def nc(cluster: NatsCluster) -> AsyncIterator[NATS]:
    nc = await connect_daemon(NatsOptions(cluster.url))  # as the daemon: it waits for JetStream
    try:
        yield nc
    finally:
        await nc.close()


async def replicas_of(nc: NATS) -> dict[str, int]:
    """How many servers hold each of Sluice's streams and its consumer, as the cluster reports it."""
    js = nc.jetstream()

    def count(cluster) -> int:
        return 1 + len(cluster.replicas or []) if cluster and cluster.leader else 0

    return {
        STEPS_STREAM: count((await js.stream_info(STEPS_STREAM)).cluster),
        SOURCES_STREAM: count((await js.stream_info(SOURCES_STREAM)).cluster),
        STEPS_CONSUMER: count((await js.consumer_info(STEPS_STREAM, STEPS_CONSUMER)).cluster),
    }


async def start_daemon_side(nc: NATS, pool, replicas: int | None) -> None:
    """What a starting daemon does with JetStream: the bucket, then the step events' stream and consumer."""
    await SourceStore.open(nc, replicas=replicas)
    events = StepEvents(pool=pool, nc=nc, transitions=None, cancels=None, replicas=replicas)
    await events.start()
    await events.stop()


async def test_sluices_streams_take_the_replicas_and_follow_a_change_both_ways(nc: NATS, pool) -> None:
    # Unset (None) keeps what exists: a daemon started without SLUICE_NATS_REPLICAS beside the
    # cluster's takes no copies away.
    for replicas, kept in ((1, 1), (3, 3), (None, 3), (1, 1)):
        await start_daemon_side(nc, pool, replicas)

        wanted = dict.fromkeys((STEPS_STREAM, SOURCES_STREAM, STEPS_CONSUMER), kept)
        async with asyncio.timeout(15):  # the cluster moves the data to the new peers meanwhile
            while (found := await replicas_of(nc)) != wanted:  # noqa: ASYNC110 (polled: no event says it)
                await asyncio.sleep(0.2)
        assert found == wanted


async def test_replicas_beyond_the_cluster_are_refused_naming_the_remedy(nc: NATS, pool, monkeypatch) -> None:
    monkeypatch.setattr(streams, "PLACEMENT_WAIT_S", 1.0)
    with pytest.raises(Unavailable) as refused:
        await start_daemon_side(nc, pool, 5)

    message = str(refused.value)
    assert "no suitable peers" in message
    assert "SLUICE_NATS_REPLICAS=5 needs a NATS cluster of at least 5 JetStream servers" in message


async def test_a_triggers_consumer_has_its_streams_replicas(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="USER_R3", subjects=["user.r3.>"], num_replicas=3))

    config = trigger_consumer("t", "user.r3.>", ack_wait=5, max_ack_pending=8)

    info = await js.add_consumer("USER_R3", config=config)

    assert info.config.num_replicas in (None, 0)  # none named: the stream's
    assert info.cluster.leader
    assert len(info.cluster.replicas or []) == 2


async def test_the_daemon_waits_for_the_servers_its_replicas_need(tmp_path: Path, pool) -> None:
    cluster = NatsCluster(tmp_path / "joining").start(count=2)  # the third joins later (compose)
    try:
        nc = await connect_daemon(NatsOptions(cluster.url))
        try:
            starting = asyncio.create_task(start_daemon_side(nc, pool, 3))
            await asyncio.sleep(2)
            assert not starting.done()  # too few peers for three copies: it asks again
            await asyncio.to_thread(cluster.restart, "n2")
            async with asyncio.timeout(streams.PLACEMENT_WAIT_S):
                await starting
            assert set((await replicas_of(nc)).values()) == {3}
        finally:
            await nc.close()
    finally:
        cluster.stop()


async def test_the_daemon_waits_for_a_cluster_that_is_still_starting(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "late")
    cluster.start()  # accepting clients: JetStream elects its meta leader after this
    try:
        nc = await connect_daemon(NatsOptions(cluster.url))
        try:
            await nc.jetstream().add_stream(StreamConfig(name="EARLY", subjects=["early.>"], num_replicas=3))
        finally:
            await nc.close()
    finally:
        cluster.stop()
