"""The daemon's NATS connection, the check that NATS is closed to strangers, and the source snapshot
store on JetStream."""

from __future__ import annotations

import asyncio
import contextlib

import nats
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js.errors import ObjectNotFoundError
from nats.js.object_store import ObjectStore

from daemon.errors import Unavailable
from kit.nats import BusError, NatsErrors, NatsOptions
from kit.nats import connect as connect_nats
from kit.streams import ensure_sources_bucket, wait_for_jetstream
from runners.protocol import DAEMON_INBOX

log = structlog.get_logger(__name__)


PROBE_TIMEOUT_S = 2.0


async def connect(options: NatsOptions, *, name: str = "sluice-daemon") -> NATS:
    """Connect to NATS as an agent does (``kit.nats.connect``: the first connection within a
    bounded time, later losses reconnected for as long as the daemon lives), with replies on the
    daemon's own inbox, and wait (as long again) until JetStream answers: a cluster starting beside
    the daemon elects its leaders first.

    Raises:
        Unavailable: no server answered, it refused the credentials, or JetStream did not answer.
    """
    try:
        nc = await connect_nats(options, name=name, inbox_prefix=DAEMON_INBOX)
    except BusError as exc:
        raise Unavailable(str(exc)) from exc
    try:
        await wait_for_jetstream(nc.jetstream(), options.connect_timeout_s)
    except BusError as exc:
        with contextlib.suppress(*NatsErrors):
            await nc.close()
        raise Unavailable(str(exc)) from exc
    return nc


async def strangers_may_publish(options: NatsOptions, nc: NATS) -> bool:
    """Whether a client without credentials can connect to the server ``nc`` is on and publish on
    ``sluice.>`` (where it could forge heartbeats, step events and assignments): it tries, and ``nc``
    listens for what arrives."""
    subject = f"sluice.probe.{nc.new_inbox().rsplit('.', 1)[-1]}"
    arrived = asyncio.Event()

    async def on_message(_msg: object) -> None:
        arrived.set()

    subscription = await nc.subscribe(subject, cb=on_message)
    try:
        await nc.flush(timeout=PROBE_TIMEOUT_S)
        try:
            stranger = await nats.connect(
                servers=options.servers,
                tls=options.tls_context(),
                allow_reconnect=False,
                connect_timeout=PROBE_TIMEOUT_S,
                error_cb=_ignore,
            )
        except (*NatsErrors, nats.errors.NoServersError):
            return False
        try:
            await stranger.publish(subject, b"")
            await stranger.flush(timeout=PROBE_TIMEOUT_S)
            await nc.flush(timeout=PROBE_TIMEOUT_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), 0.2)
        except NatsErrors:
            pass
        finally:
            with contextlib.suppress(*NatsErrors):
                await stranger.close()
        return arrived.is_set()
    finally:
        with contextlib.suppress(*NatsErrors):
            await subscription.unsubscribe()


async def _ignore(_exc: Exception) -> None:
    """A refused stranger is the good outcome; nothing to log."""


class SourceStore:
    """Version source snapshots by digest, where agents on any machine can fetch them."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @classmethod
    async def open(cls, nc: NATS, *, replicas: int | None = None) -> SourceStore:
        """Open the bucket, creating it on first use (file storage: snapshots outlive restarts) with
        ``replicas`` copies (None: one); a bucket that exists is brought to ``replicas`` (None: left
        at its own) and otherwise used as it is, whoever made it.

        Raises:
            Unavailable: JetStream refused the replicas (too few servers).
        """
        try:
            return cls(await ensure_sources_bucket(nc.jetstream(), replicas))
        except BusError as exc:
            raise Unavailable(str(exc)) from exc

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
