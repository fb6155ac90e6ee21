"""Every JetStream stream, consumer and object store Sluice makes, each configured here once: the step
events' stream and the daemon's consumer of it, the source snapshot bucket, and the durable consumer
of a ``nats`` trigger on a user's stream (which Sluice never creates).

Sluice's own streams and the bucket (a stream, ``SOURCES_STREAM``, underneath) keep ``replicas``
copies on a NATS cluster (``SLUICE_NATS_REPLICAS``); a changed count is applied to what exists, and
NATS moves the data to the new peers. Unset, they are made with one and what exists keeps its count.
Consumers name no count: they have their stream's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ObjectStoreConfig, StorageType, StreamConfig
from nats.js.object_store import ObjectStore

from kit.backoff import backoff_s
from kit.nats import BusError, NatsErrors
from kit.subjects import SOURCES_BUCKET, SOURCES_STREAM, STEP_EVENTS, STEPS_STREAM
from kit.supervise import describe

T = TypeVar("T")

log = structlog.get_logger(__name__)

MAX_REPLICAS = 5
"""The most copies JetStream keeps of a stream."""
STREAM_NAME_IN_USE = 10058
"""JetStream's error code for a stream that exists with another configuration."""

STEPS_DUPLICATE_WINDOW_S = 120.0
STEPS_CONSUMER = "sluice-daemon"
STEPS_ACK_WAIT_S = 5.0
"""What a daemon that died while holding events costs its successor: they come back after this."""
STEPS_MAX_ACK_PENDING = 1024
"""Events delivered and not yet acked: few enough (four of the daemon's batches) to be applied well
within ``STEPS_ACK_WAIT_S`` even when the database is slow, so that none comes back while it waits."""


def steps_stream(replicas: int = 1) -> StreamConfig:
    """``STEPS_STREAM``: file storage, a 2-minute duplicate window (a republished event is stored once)."""
    return StreamConfig(
        name=STEPS_STREAM,
        subjects=[STEP_EVENTS],
        storage=StorageType.FILE,
        duplicate_window=STEPS_DUPLICATE_WINDOW_S,
        description="Sluice step events from agents",
        num_replicas=replicas,
    )


async def ensure_steps_stream(js: JetStreamContext, replicas: int | None = None) -> None:
    """Creates ``STEPS_STREAM``, or brings it to :func:`steps_stream`'s config, ``replicas`` included
    (None: made with one, and an existing stream keeps its own).

    Raises ``BusError`` when JetStream refuses (too few servers for ``replicas``, for one, once
    ``PLACEMENT_WAIT_S`` has passed).
    """
    await _placed(lambda: _ensure_steps_stream(js, replicas))


async def _ensure_steps_stream(js: JetStreamContext, replicas: int | None) -> None:
    config = steps_stream(replicas or 1)
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise _refused(STEPS_STREAM, config.num_replicas, exc) from exc
        was = (await js.stream_info(STEPS_STREAM)).config.num_replicas
        if replicas is None:
            config.num_replicas = was
        await _update_stream(js, config, was)


async def ensure_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    """Brings ``stream`` (one of Sluice's, such as the bucket's ``SOURCES_STREAM``) to ``replicas``,
    leaving the rest of its configuration as it is.

    Raises ``BusError`` when JetStream refuses.
    """
    config = (await js.stream_info(stream)).config
    if config.num_replicas != replicas:
        was, config.num_replicas = config.num_replicas, replicas
        await _update_stream(js, config, was)


async def _update_stream(js: JetStreamContext, config: StreamConfig, was: int | None) -> None:
    """Applies ``config`` to its stream, which had ``was`` replicas."""
    try:
        await js.update_stream(config)
    except nats.js.errors.APIError as exc:
        raise _refused(config.name, config.num_replicas, exc, was=was) from exc
    if was != config.num_replicas:
        log.info("stream_replicas_changed", stream=config.name, replicas=config.num_replicas, was=was)


def _refused(
    stream: str, wanted: int | None, exc: nats.js.errors.APIError, was: int | None = None
) -> BusError:
    """What the operator reads when JetStream will not keep a stream at the replicas asked for."""
    change = f" from {was} to {wanted} replicas" if was not in (None, wanted) else f" with {wanted} replicas"
    remedy = (
        f"SLUICE_NATS_REPLICAS={wanted} needs a NATS cluster of at least {wanted} JetStream servers"
        if wanted and wanted > 1
        else "check the NATS server's JetStream limits"
    )
    if was not in (None, wanted):
        remedy += (
            f"; set it back to {was}, or change the stream with `nats stream edit {stream} --replicas N`"
        )
    return BusError(
        f"JetStream refused stream {stream}{change}: {exc.description or describe(exc)} ({remedy})"
    )


PLACEMENT_WAIT_S = 30.0
"""How long a daemon asks again while JetStream has too few servers for the replicas: a cluster
starting beside the daemon (compose, Kubernetes) answers before all its servers have joined it."""
_NO_PEERS = 10005
"""JetStream's error code for "no suitable peers for placement"."""


async def _placed(make: Callable[[], Awaitable[T]]) -> T:
    """``make()``, asked again with backoff while JetStream has too few servers to place it."""
    deadline = time.monotonic() + PLACEMENT_WAIT_S
    tries = 0
    while True:
        tries += 1
        try:
            return await make()
        except BusError as exc:
            cause = exc.__cause__
            delay = min(backoff_s(tries, base=0.2, cap=2.0), deadline - time.monotonic())
            if not (isinstance(cause, nats.js.errors.APIError) and cause.err_code == _NO_PEERS) or delay <= 0:
                raise
            log.warning("jetstream_peers_missing", tries=tries, retry_in=round(delay, 2), error=str(exc))
            await asyncio.sleep(delay)


async def wait_for_jetstream(js: JetStreamContext, timeout_s: float) -> None:
    """Returns once JetStream answers for this account: a cluster that is starting answers only after
    its servers elected a meta leader (until then a server may even say that JetStream is not
    enabled for the account), and a daemon may start beside it (compose, Kubernetes). Each failed
    try is logged (``jetstream_unavailable``) and retried with backoff.

    Raises ``BusError`` with JetStream's last answer when it did not answer within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    tries = 0
    while True:
        tries += 1
        try:
            await js.account_info()
            return
        except NatsErrors as exc:
            delay = min(backoff_s(tries, base=0.2, cap=2.0), deadline - time.monotonic())
            if delay <= 0:
                answer = exc.description if isinstance(exc, nats.js.errors.APIError) else None
                raise BusError(
                    f"JetStream did not serve this account within {timeout_s:g}s: {answer or describe(exc)}"
                ) from exc
            log.warning("jetstream_unavailable", tries=tries, retry_in=round(delay, 2), error=describe(exc))
            await asyncio.sleep(delay)


def steps_consumer(deliver_subject: str) -> ConsumerConfig:
    """The daemons' durable consumer of ``STEPS_STREAM`` (``STEPS_CONSUMER``, one queue group),
    pushing to ``deliver_subject``: the same for every daemon, so that daemons starting together,
    each making the consumer, make the same one (with a subject of its own, the last one's creation
    took the events from the others' subscriptions). It names no replicas: a consumer without a
    count has its stream's, and follows a change of them (one made with a count keeps it, and cannot
    be raised before the stream has finished growing)."""
    return ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=STEPS_ACK_WAIT_S,
        max_ack_pending=STEPS_MAX_ACK_PENDING,
        deliver_policy=DeliverPolicy.ALL,
        deliver_subject=deliver_subject,
        deliver_group=STEPS_CONSUMER,
    )


async def ensure_sources_bucket(js: JetStreamContext, replicas: int | None = None) -> ObjectStore:
    """``SOURCES_BUCKET``, made on first use with :func:`sources_bucket`'s config (None: one replica);
    one that exists is brought to ``replicas`` (None: left at its own) and otherwise used as it is,
    whoever made it.

    Raises ``BusError`` when JetStream refuses (too few servers for ``replicas``, for one, once
    ``PLACEMENT_WAIT_S`` has passed).
    """
    return await _placed(lambda: _ensure_sources_bucket(js, replicas))


async def _ensure_sources_bucket(js: JetStreamContext, replicas: int | None) -> ObjectStore:
    try:
        store = await js.object_store(SOURCES_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_object_store(SOURCES_BUCKET, config=sources_bucket(replicas or 1))
        except nats.js.errors.APIError as exc:
            raise _refused(SOURCES_STREAM, replicas or 1, exc) from exc
    if replicas is not None:
        await ensure_replicas(js, SOURCES_STREAM, replicas)
    return store


def sources_bucket(replicas: int = 1) -> ObjectStoreConfig:
    """``SOURCES_BUCKET``: file storage, so that snapshots outlive restarts."""
    return ObjectStoreConfig(
        bucket=SOURCES_BUCKET,
        storage=StorageType.FILE,
        description="Sluice version source snapshots",
        replicas=replicas,
    )


def trigger_durable(trigger: str) -> str:
    """The JetStream durable consumer that trigger ``trigger`` reads its stream through."""
    return f"sluice-trigger-{trigger}"


def trigger_consumer(trigger: str, subject: str, *, ack_wait: float, max_ack_pending: int) -> ConsumerConfig:
    """The durable pull consumer of a JetStream trigger on ``subject``. ``deliver_policy`` counts only
    when the consumer is first created (the whole stream); an update keeps the consumer's position.
    It names no replicas: the stream is the user's, and a consumer without a count has the stream's,
    also after the user changes it."""
    name = trigger_durable(trigger)
    return ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"Sluice trigger {trigger}",
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
    )
