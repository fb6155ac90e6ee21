"""The daemon's NATS connection and the source snapshot store on JetStream."""

from __future__ import annotations

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from daemon.errors import Unavailable
from runners.protocol import SOURCES_BUCKET

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 5


async def connect(urls: str, *, creds: str | None = None, name: str = "sluice-daemon") -> NATS:
    """Connect to NATS (``urls`` comma-separated) and keep reconnecting for as long as the daemon lives."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=str(exc))

    client: NATS | None = None

    async def on_disconnected() -> None:
        if client is not None and (client.is_closed or client.is_draining):
            return  # our own shutdown, not a lost server
        log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected")

    servers = [url.strip() for url in urls.split(",") if url.strip()]
    try:
        client = await nats.connect(
            servers=servers,
            name=name,
            user_credentials=creds,
            connect_timeout=CONNECT_TIMEOUT_S,
            drain_timeout=DRAIN_TIMEOUT_S,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise Unavailable(
            f"cannot connect to NATS at {', '.join(servers)}: {exc or type(exc).__name__}"
        ) from exc
    return client


class SourceStore:
    """Version source snapshots by digest, where agents on any machine can fetch them."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @classmethod
    async def open(cls, nc: NATS) -> SourceStore:
        """Open the bucket, creating it on first use (file storage: snapshots outlive restarts).

        A bucket that exists is used as it is, whoever made it and however it is configured.
        """
        js = nc.jetstream()
        try:
            return cls(await js.object_store(SOURCES_BUCKET))
        except BucketNotFoundError:
            config = ObjectStoreConfig(
                bucket=SOURCES_BUCKET, storage=StorageType.FILE, description="Sluice version source snapshots"
            )
            return cls(await js.create_object_store(SOURCES_BUCKET, config=config))

    async def has(self, digest: str) -> bool:
        try:
            await self._store.get_info(digest)
        except ObjectNotFoundError:
            return False
        return True

    async def put(self, digest: str, archive: bytes) -> None:
        """Store ``archive`` under ``digest``; the caller has verified that they match."""
        await self._store.put(digest, archive)
        log.info("source_stored", digest=digest, size=len(archive))

    async def get(self, digest: str) -> bytes:
        result = await self._store.get(digest)
        return result.data
