"""The agent's NATS connection, the step event stream and the source snapshot bucket."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from runners.protocol import SOURCES_BUCKET, STEPS_STREAM

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 5.0
"""One try at one server."""
FIRST_CONNECT_TIMEOUT_S = 30.0
"""All tries at the first connection; after it the client reconnects for as long as the agent lives."""
DRAIN_TIMEOUT_S = 5
STEP_SUBJECTS = "sluice.steps.>"
DUPLICATE_WINDOW_S = 300.0
"""A republished step event (same ``Nats-Msg-Id``) within this window is stored once."""
SOURCE_FETCH_TIMEOUT_S = 300.0

NatsErrors = (nats.errors.Error, OSError, TimeoutError)
"""What a NATS call can raise when the server is away, slow or refuses (JetStream's errors included)."""


class BusError(Exception):
    """NATS cannot be reached, or refuses what the agent needs of it."""


async def connect(
    urls: str, *, creds: str | None = None, name: str, first_timeout_s: float = FIRST_CONNECT_TIMEOUT_S
) -> NATS:
    """Connect to NATS (``urls`` comma-separated); later losses of the server are reconnected forever.

    Raises ``BusError`` when no server answers within ``first_timeout_s``.
    """
    servers = [url.strip() for url in urls.split(",") if url.strip()]
    if not servers:
        raise BusError("no NATS URL given (SLUICE_NATS_URL)")
    client: NATS | None = None
    last_error = ["no server answered"]

    async def on_error(exc: Exception) -> None:
        last_error[0] = str(exc) or type(exc).__name__
        log.warning("nats_error", error=last_error[0])

    async def on_disconnected() -> None:
        if client is not None and (client.is_closed or client.is_draining):
            return  # our own shutdown, not a lost server
        log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected")

    try:
        client = await asyncio.wait_for(
            nats.connect(
                servers=servers,
                name=name,
                user_credentials=creds,
                connect_timeout=CONNECT_TIMEOUT_S,
                drain_timeout=DRAIN_TIMEOUT_S,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            ),
            first_timeout_s,
        )
    except TimeoutError as exc:
        raise BusError(
            f"cannot connect to NATS at {', '.join(servers)} within {first_timeout_s:g}s: {last_error[0]}"
        ) from exc
    except (*NatsErrors, nats.errors.NoServersError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BusError(f"cannot connect to NATS at {', '.join(servers)}: {reason}") from exc
    return client


async def ensure_steps_stream(js: JetStreamContext) -> None:
    """Creates ``STEPS_STREAM`` unless it exists (the daemon creates it too, with its own settings,
    which win): agent and daemon may start in any order. Errors are logged, not raised: publishing
    retries until the stream is there."""
    try:
        await js.stream_info(STEPS_STREAM)
        return
    except nats.js.errors.NotFoundError:
        pass
    except NatsErrors as exc:
        log.warning("steps_stream_unknown", stream=STEPS_STREAM, error=str(exc) or type(exc).__name__)
        return
    config = StreamConfig(
        name=STEPS_STREAM,
        subjects=[STEP_SUBJECTS],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        description="Sluice step events from agents",
    )
    try:
        await js.add_stream(config)
        log.info("steps_stream_created", stream=STEPS_STREAM)
    except nats.js.errors.BadRequestError:
        pass  # created by the daemon meanwhile
    except NatsErrors as exc:
        log.warning("steps_stream_not_created", stream=STEPS_STREAM, error=str(exc) or type(exc).__name__)


async def fetch_source(js: JetStreamContext, digest: str) -> bytes:
    """The snapshot archive named ``digest`` in ``SOURCES_BUCKET``.

    Raises ``BusError`` when the bucket or the object does not exist or NATS fails.
    """
    try:
        store = await js.object_store(SOURCES_BUCKET)
        result = await asyncio.wait_for(store.get(digest), SOURCE_FETCH_TIMEOUT_S)
    except nats.js.errors.BucketNotFoundError:
        raise BusError(f"no source bucket {SOURCES_BUCKET} on NATS") from None
    except nats.js.errors.ObjectNotFoundError:
        raise BusError(f"source snapshot {digest} is not in {SOURCES_BUCKET}") from None
    except NatsErrors as exc:
        raise BusError(f"cannot fetch source snapshot {digest}: {exc or type(exc).__name__}") from exc
    return result.data or b""
