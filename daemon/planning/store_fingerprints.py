"""Fingerprints of data in ``s3`` datastores: has what a step reads changed since an earlier run?

The counterpart of :mod:`daemon.planning.data_fingerprints` for object stores, with the same shape:
``sha256:<hex>`` over one entry per object under the path, sorted by its key relative to the path.
The path is a "directory" (every object whose key starts with ``path/``) or else a single object
(its key is ``path``); nothing at either is :data:`MISSING`.

- ``listing`` (the default): each object's relative key, size and ETag (its version id where the
  store has versioning and no ETag): one LIST request per 1,000 objects and no content read. A
  rewritten object gets a new ETag even with the same size and bytes count.
- ``content``: each object's relative key, size and the SHA-256 of its bytes, streamed. obstore does
  not expose S3's own SHA-256 checksums, so content is downloaded; digests are cached by (store,
  key, ETag/version), as local digests are by stat, so a second fingerprint of unchanged objects costs
  about what a listing costs. At most :data:`DEFAULT_CONCURRENCY` objects are read at once.

A store that cannot be opened (a credential variable unset) or used (denied, unreachable) raises
:class:`DataUnreadable` naming the datastore and why, never a secret.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store

from daemon.planning.data_fingerprints import FORMAT, MISSING, DataUnreadable, record
from daemon.rules.partitions import Partition, files
from kit.objectstore import S3Location, StoreError, open_store, reason_of

DEFAULT_CONCURRENCY = 16
"""Objects read at once for content digests: enough to hide each GET's latency, few enough not to
take the daemon's bandwidth or the store's request rate for one input."""

DEFAULT_MAX_CACHED_OBJECTS = 1_000_000

LIST_CHUNK = 1000
"""Objects per listing chunk: what one S3 LIST request returns."""


class _Object(NamedTuple):
    relative: str
    key: str
    size: int
    version: str
    """The ETag, or the version id where there is no ETag: what changes when the object does."""


class StoreFingerprints:
    """Fingerprints of objects under ``s3`` datastore paths, one instance per daemon (it holds the
    digest cache and one open store per datastore location)."""

    def __init__(
        self,
        *,
        max_cached_objects: int = DEFAULT_MAX_CACHED_OBJECTS,
        concurrency: int = DEFAULT_CONCURRENCY,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._digests: OrderedDict[tuple[S3Location, str, str], bytes] = OrderedDict()
        self._max_cached = max_cached_objects
        self._reading = asyncio.Semaphore(concurrency)
        self._environ = environ
        self._stores: dict[S3Location, S3Store] = {}
        self._computing: dict[tuple[S3Location, str, bool], asyncio.Future[str]] = {}

    @property
    def cached_objects(self) -> int:
        return len(self._digests)

    def store(self, location: S3Location, path: str = "") -> S3Store:
        """The store of ``location``, opened once (credentials are read from the daemon's environment
        when it is first opened).

        Raises:
            DataUnreadable: it cannot be opened (a credential variable unset, say), to read ``path``;
                names why.
        """
        found = self._stores.get(location)
        if found is None:
            try:
                found = open_store(location, self._environ)
            except StoreError as exc:
                raise DataUnreadable(location.uri(path), str(exc)) from None
            self._stores[location] = found
        return found

    async def of(self, location: S3Location, path: str, *, content: bool = False) -> str:
        """The fingerprint of the objects at ``path`` (relative to the datastore), or :data:`MISSING`.
        Calls for the same path and mode made while one is computed share it (a burst of runs reading
        one input lists it once), as local fingerprints do; cancelling one leaves it to the others.

        Raises:
            DataUnreadable: the store cannot be opened, listed or read.
        """
        key = (location, path, content)
        computing = self._computing.get(key)
        if computing is None:
            computing = asyncio.ensure_future(self._compute(location, path, content))
            self._computing[key] = computing
            computing.add_done_callback(functools.partial(self._finished, key))
        return await asyncio.shield(computing)

    def _finished(self, key: tuple[S3Location, str, bool], computing: asyncio.Future[str]) -> None:
        del self._computing[key]
        if not computing.cancelled():
            computing.exception()  # marks it retrieved: every caller may have been cancelled meanwhile

    async def _compute(self, location: S3Location, path: str, content: bool) -> str:
        store = self.store(location, path)
        kind, objects = await self._objects(store, location, path)
        if kind is None:
            return MISSING
        return await self._hash(store, location, kind, objects, content)

    async def partitions(
        self,
        location: S3Location,
        path: str,
        matches: Callable[[str], bool],
        per: int,
        previous: Mapping[int, Sequence[str]] | None,
        *,
        content: bool = False,
    ) -> list[tuple[Partition, str]]:
        """The objects under ``path`` whose relative keys ``matches``, in partitions of up to ``per``
        (sticky to ``previous``), each with the fingerprint of its own objects, as
        :meth:`daemon.planning.data_fingerprints.DataFingerprints.partitions` for local data.

        Raises:
            DataUnreadable: the store cannot be opened, listed or read.
        """
        store = self.store(location, path)
        found = {
            item.relative: item
            for item in await self._listed(store, location, path)
            if matches(item.relative)
        }
        parts = files(list(found), per, previous)
        prints = await asyncio.gather(
            *(
                self._hash(store, location, "partition", [found[name] for name in part.files], content)
                for part in parts
            )
        )
        return list(zip(parts, prints, strict=True))

    async def _objects(
        self, store: S3Store, location: S3Location, path: str
    ) -> tuple[str | None, list[_Object]]:
        """``("tree", objects)`` under ``path/``, or ``("file", [object])`` when ``path`` is an object,
        or ``(None, [])`` when nothing is there."""
        listed = await self._listed(store, location, path)
        if listed:
            return "tree", listed
        if not path:
            return None, []
        try:
            meta = await obstore.head_async(store, path)
        except FileNotFoundError:
            return None, []
        except BaseError as exc:
            raise _unreadable(location, path, exc) from None
        return "file", [_object(path.rsplit("/", 1)[-1], meta)]

    async def _listed(self, store: S3Store, location: S3Location, path: str) -> list[_Object]:
        prefix = f"{path.rstrip('/')}/" if path else ""
        found = []
        try:
            async for chunk in obstore.list(store, prefix or None, chunk_size=LIST_CHUNK):
                found.extend(_object(meta["path"][len(prefix) :], meta) for meta in chunk)
        except BaseError as exc:
            raise _unreadable(location, path, exc) from None
        return found

    async def _hash(
        self, store: S3Store, location: S3Location, kind: str, objects: list[_Object], content: bool
    ) -> str:
        objects = sorted(objects, key=lambda item: item.relative)
        digests = (
            await asyncio.gather(*(self._digest(store, location, item) for item in objects))
            if content
            else []
        )
        hasher = hashlib.sha256(record(FORMAT, "content" if content else "listing", f"s3-{kind}"))
        for index, item in enumerate(objects):
            last = digests[index].hex() if content else item.version
            hasher.update(record("f", item.relative, str(item.size), last))
        return f"sha256:{hasher.hexdigest()}"

    async def _digest(self, store: S3Store, location: S3Location, item: _Object) -> bytes:
        cache_key = (location, item.key, item.version)
        cached = self._digests.get(cache_key)
        if cached is not None:
            self._digests.move_to_end(cache_key)
            return cached
        async with self._reading:
            digest = await _read_digest(store, location, item)
        self._digests[cache_key] = digest
        while len(self._digests) > self._max_cached:
            self._digests.popitem(last=False)
        return digest


async def _read_digest(store: S3Store, location: S3Location, item: _Object) -> bytes:
    hasher = hashlib.sha256()
    try:
        result = await obstore.get_async(store, item.key)
        async for chunk in result.stream():
            # Chunks are megabytes: hashed in a thread (hashlib lets go of the GIL), off the loop.
            await asyncio.to_thread(hasher.update, chunk)
    except BaseError as exc:
        raise _unreadable(location, item.key, exc) from None
    return hasher.digest()


def _object(relative: str, meta: Mapping[str, object]) -> _Object:
    version = meta.get("e_tag") or meta.get("version") or ""
    return _Object(relative, str(meta["path"]), int(meta["size"]), str(version))  # type: ignore[call-overload]


def _unreadable(location: S3Location, path: str, error: BaseException) -> DataUnreadable:
    return DataUnreadable(location.uri(path), reason_of(error))
