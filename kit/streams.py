"""Every JetStream stream, consumer and object store Sluice makes, each configured here once: the step
events' stream and the daemon's consumer of it, the source snapshot bucket, and the durable consumer
of a ``nats`` trigger on a user's stream (which Sluice never creates)."""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ObjectStoreConfig, StorageType, StreamConfig

from kit.subjects import SOURCES_BUCKET, STEP_EVENTS, STEPS_STREAM

STEPS_DUPLICATE_WINDOW_S = 120.0
STEPS_CONSUMER = "sluice-daemon"
STEPS_ACK_WAIT_S = 5.0
"""What a daemon that died while holding events costs its successor: they come back after this."""
STEPS_MAX_ACK_PENDING = 1024
"""Events delivered and not yet acked: few enough (four of the daemon's batches) to be applied well
within ``STEPS_ACK_WAIT_S`` even when the database is slow, so that none comes back while it waits."""


def steps_stream() -> StreamConfig:
    """``STEPS_STREAM``: file storage, a 2-minute duplicate window (a republished event is stored once)."""
    return StreamConfig(
        name=STEPS_STREAM,
        subjects=[STEP_EVENTS],
        storage=StorageType.FILE,
        duplicate_window=STEPS_DUPLICATE_WINDOW_S,
        description="Sluice step events from agents",
    )


async def ensure_steps_stream(js: JetStreamContext) -> None:
    """Creates ``STEPS_STREAM``, or brings it to :func:`steps_stream`'s config."""
    config = steps_stream()
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)


def steps_consumer() -> ConsumerConfig:
    """The daemons' durable consumer of ``STEPS_STREAM`` (``STEPS_CONSUMER``, one queue group)."""
    return ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=STEPS_ACK_WAIT_S,
        max_ack_pending=STEPS_MAX_ACK_PENDING,
        deliver_policy=DeliverPolicy.ALL,
    )


def sources_bucket() -> ObjectStoreConfig:
    """``SOURCES_BUCKET``: file storage, so that snapshots outlive restarts."""
    return ObjectStoreConfig(
        bucket=SOURCES_BUCKET, storage=StorageType.FILE, description="Sluice version source snapshots"
    )


def trigger_durable(trigger: str) -> str:
    """The JetStream durable consumer that trigger ``trigger`` reads its stream through."""
    return f"sluice-trigger-{trigger}"


def trigger_consumer(trigger: str, subject: str, *, ack_wait: float, max_ack_pending: int) -> ConsumerConfig:
    """The durable pull consumer of a JetStream trigger on ``subject``. ``deliver_policy`` counts only
    when the consumer is first created (the whole stream); an update keeps the consumer's position."""
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
