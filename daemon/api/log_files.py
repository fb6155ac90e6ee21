"""Where the API reads attempts' logs: files under the ``default`` datastore's path, or objects in it
when it is an ``s3`` datastore (agents upload each log as it grows, so a log read from the store
lags the step by the agent's upload interval). A log not there yet reads as empty: nothing written
so far."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

import msgspec
import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store

from daemon.documents.references import DEFAULT_DATASTORE
from daemon.errors import Unavailable
from daemon.planning.data_fingerprints import DataUnreadable
from daemon.planning.store_fingerprints import StoreFingerprints
from daemon.store.catalog import get_datastore
from daemon.store.db import Db
from kit.objectstore import S3Location, reason_of


class LogFiles(Protocol):
    poll_s: float
    """How often a follower looks for more."""

    async def read(self, relative: str, offset: int = 0, limit: int | None = None) -> bytes:
        """Up to ``limit`` bytes (None: all) of the log at ``relative`` (to the datastore) from
        ``offset``; empty when there is nothing there (yet)."""
        ...


class LocalLogs:
    poll_s = 0.25

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    async def read(self, relative: str, offset: int = 0, limit: int | None = None) -> bytes:
        return await asyncio.to_thread(_read_file, self.root / relative, offset, limit)


class StoreLogs:
    poll_s = 1.0
    """Each look is a request to the store (and agents upload every few seconds)."""

    def __init__(self, location: S3Location, store: S3Store) -> None:
        self.location = location
        self.store = store

    async def read(self, relative: str, offset: int = 0, limit: int | None = None) -> bytes:
        """A HEAD, then a ranged GET of what is new: a range past the end is an error to S3."""
        try:
            size = (await obstore.head_async(self.store, relative))["size"]
            if size <= offset:
                return b""
            end = size if limit is None else min(size, offset + limit)
            result = await obstore.get_async(self.store, relative, options={"range": (offset, end)})
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            return b""
        except BaseError as exc:
            raise Unavailable(f"cannot read {self.location.uri(relative)}: {reason_of(exc)}") from None


async def default_logs(db: Db, stores: StoreFingerprints) -> LogFiles:
    """The logs of the ``default`` datastore as it is now, an ``s3`` one through ``stores``.

    Raises:
        Unavailable: it has no path, or its store cannot be opened (a credential variable unset).
    """
    datastore = await get_datastore(db, DEFAULT_DATASTORE)
    if datastore is not None and datastore.type == "s3":
        location = msgspec.convert(datastore.spec, S3Location)
        try:
            return StoreLogs(location, stores.store(location))
        except DataUnreadable as exc:
            raise Unavailable(f"cannot read logs from the default datastore: {exc.message}") from None
    if datastore is None or not datastore.spec.get("path"):
        raise Unavailable("the default datastore has no path")
    return LocalLogs(datastore.spec["path"])


def _read_file(path: Path, offset: int, limit: int | None) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(-1 if limit is None else limit)
    except FileNotFoundError:
        return b""
