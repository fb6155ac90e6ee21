"""The daemon's NATS connection and the source snapshot store on JetStream."""

from __future__ import annotations

import structlog
from nats.aio.client import Client as NATS
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from daemon.errors import Unavailable
from runners import bus as runners_bus
from runners.protocol import SOURCES_BUCKET

log = structlog.get_logger(__name__)


async def connect(urls: str, *, creds: str | None = None, name: str = "sluice-daemon") -> NATS:
    """Connect to NATS (``urls`` comma-separated) as an agent does (``runners.bus.connect``: the first
    connection within a bounded time, later losses reconnected for as long as the daemon lives).

    Raises:
        Unavailable: no server answered.
    """
    try:
        return await runners_bus.connect(urls, creds=creds, name=name)
    except runners_bus.BusError as exc:
        raise Unavailable(str(exc)) from exc


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
