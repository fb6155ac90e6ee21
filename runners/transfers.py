"""Moving an attempt's files between ``s3`` datastores and its staging directory.

Downloads (before the step starts): a step's output through its manifests (``published``; each
object fetched only if its ETag is still the one published), else a prefix by listing it, else a
single object. Objects come through the agent's :class:`ObjectCache`: hard-linked read-only into the
attempt's tree, or copied (``copy``, for a step in a container).

Uploads (after the step succeeded): an output directory goes to the same relative key; keys under it
that this attempt does not write (left by a killed attempt) are deleted first, the files go up
concurrently (big ones in parts, each part read and hashed on obstore's own threads), and the
manifest is written last: until then, nothing of the output is visible to readers.

Both write progress lines through ``report`` (into the step's log) and raise :class:`TransferError`
naming the object and the reason; never a secret, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import posixpath
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import obstore
import structlog
from obstore.exceptions import BaseError

from kit.objectstore import (
    MANIFEST_SUFFIX,
    Manifest,
    ManifestFile,
    StoreError,
    encode_manifest,
    manifest_key,
    partitions_published,
    published,
    read_manifest,
    reason_of,
)
from runners.objectcache import ObjectCache
from runners.staging import Remote

log = structlog.get_logger(__name__)

WHOLE_TRANSFER_MAX = 16 * 1024**2
"""Files up to this size go up in one request (read whole first: at most ``FILES_AT_ONCE`` of them
in memory; a multipart upload costs at least three, and the store more work to put it together),
and come down in one."""
PART_SIZE = 8 * 1024**2
"""Bigger files go up in parts and come down in ranges of this size (S3's smallest part is 5 MiB);
a whole download is written in chunks of it."""
MAX_PARTS = 10_000
"""S3's most parts of one upload: a file over ``MAX_PARTS * PART_SIZE`` (78 GiB) goes up in bigger
parts."""
FILES_AT_ONCE = 16
PARTS_AT_ONCE = 4
"""Parts of one file in flight: at most ``FILES_AT_ONCE * PARTS_AT_ONCE`` parts in memory."""
PROGRESS_INTERVAL_S = 5.0
LOG_UPLOAD_INTERVAL_S = 2.0
LOG_UPLOAD_BYTES_PER_S = 4 * 1024**2
"""A log goes up whole each time (S3 has no append): a big one less often than every
``LOG_UPLOAD_INTERVAL_S``, so that a 100 MiB log costs 4 MiB/s, not 50."""

Report = Callable[[str], Awaitable[None]]
T = TypeVar("T")


class TransferError(Exception):
    """A download or upload failed; the message names the object and the reason, for the user."""


@dataclass(frozen=True, slots=True)
class _Object:
    key: str
    """Relative to the store's prefix."""
    path: str
    """Relative to the remote's local path ('' for the path itself: a single object)."""
    size: int
    e_tag: str | None


# -- downloads -------------------------------------------------------------------------------------


async def download(remote: Remote, cache: ObjectCache, report: Report, *, copy: bool = False) -> None:
    """Puts what ``remote`` names at its local path; nothing there leaves no path (as a missing
    path of a local datastore would), except for a step's output: its step succeeded, so an output
    that is not published is an error. ``copy``: cached objects are copied, not linked (see
    ``ObjectCache.place``). Raises ``TransferError``."""
    try:
        objects = await _objects(remote)
    except (BaseError, StoreError, OSError) as exc:
        raise TransferError(f"{remote.what}: cannot list {remote.uri}: {_reason(exc)}") from None
    if objects is None and (upstream := remote.upstream) is not None:
        raise TransferError(
            f"{remote.what}: output {upstream.output} of step {upstream.step} in run {upstream.run_id} "
            f"is not published: no manifest at or under {remote.uri}"
        )
    if objects is None:
        await report(f"{remote.what}: nothing at {remote.uri}")
        return
    progress = _Progress(report, f"{remote.what}", len(objects), sum(item.size for item in objects))
    await report(f"downloading {remote.what} from {remote.uri}: {progress.total}")
    hits = 0
    fetch = _Fetcher()

    async def one(item: _Object) -> None:
        nonlocal hits
        dest = remote.path / item.path if item.path else remote.path
        try:
            await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
            if item.e_tag is None:  # no version to name it by: not cached
                await fetch(remote, item, dest)
            else:
                identity = (remote.location.endpoint or "", remote.location.bucket)
                identity += (remote.location.key(item.key), item.e_tag)
                hit = await cache.place(
                    identity, item.size, dest, lambda file: fetch(remote, item, file), copy=copy
                )
                hits += hit  # not in one statement: ``hits`` would be read before the await
        except (BaseError, OSError) as exc:
            raise TransferError(_failure(f"{remote.what}: cannot download", remote, item.key, exc)) from None
        progress.add(item.size)

    try:
        async with progress.reporting():
            await _each(one, objects)
    finally:
        fetch.close()
    await report(f"downloaded {remote.what}: {progress.summary()}, {hits} from the agent's cache")


async def _objects(remote: Remote) -> list[_Object] | None:
    """What ``remote`` names: a published output's files, a prefix's objects, or one object.

    A step's output is only what its manifests list (objects without one are a killed attempt's).
    Any other path may be an output too (a daemon before ``Assignment.upstream``, a datastore path
    that names one): its own manifest is one request; a prefix is listed once, and only a listing
    with manifests in it (a fan-out step's output: one per partition) is read through them."""
    store, key = remote.store, remote.key
    if remote.upstream is not None:
        files = await published(store, key)
        return None if files is None else _published(key, files)
    manifest = await read_manifest(store, manifest_key(key)) if key else None
    if manifest is not None:
        return _published(key, {entry.path: entry for entry in manifest.files})
    listing = [meta async for chunk in obstore.list(store, key or None) for meta in chunk]
    if any(meta["path"].endswith(MANIFEST_SUFFIX) for meta in listing):
        files = await partitions_published(store, key, (meta["path"] for meta in listing))
        return _published(key, files or {})
    start = len(key) + 1 if key else 0
    objects = [
        _Object(meta["path"], _local(meta["path"][start:], key), meta["size"], meta["e_tag"])
        for meta in listing
    ]
    if objects or not key:
        return objects or None
    try:
        meta = await obstore.head_async(store, key)
    except FileNotFoundError:
        return None
    return [_Object(key, "", meta["size"], meta["e_tag"])]


def _published(key: str, files: dict[str, ManifestFile]) -> list[_Object]:
    return [
        _Object(posixpath.join(key, path), _local(path, key), entry.size, entry.e_tag)
        for path, entry in files.items()
    ]


def _local(relative: str, key: str) -> str:
    """``relative`` (an object's path under ``key``) as a path that stays under the input's."""
    normal = posixpath.normpath(relative)
    if relative.startswith("/") or normal.startswith("..") or normal == ".":
        raise StoreError(f"object {posixpath.join(key, relative)!r} cannot be a local path")
    return normal


class _Fetcher:
    """Fetches objects into files on threads of its own, ``FILES_AT_ONCE`` at a time: each object
    in one call (requests, body and writes), which costs the loop one wake-up per object rather than
    one per chunk. An object bigger than ``WHOLE_TRANSFER_MAX`` comes in ranges of ``PART_SIZE``,
    ``PARTS_AT_ONCE`` at a time (one connection is slow for a big object on S3); each range only of
    the version listed. An abandoned fetch stops at its next chunk or range."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(FILES_AT_ONCE, thread_name_prefix="download")
        self._abandoned = threading.Event()

    def close(self) -> None:
        self._abandoned.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, remote: Remote, item: _Object, file: Path) -> None:
        """Writes ``item``'s content to ``file``: only the version the listing or manifest saw."""
        loop = asyncio.get_running_loop()
        fetch = self._ranges if item.size > WHOLE_TRANSFER_MAX and item.e_tag else self._whole
        await loop.run_in_executor(self._pool, fetch, remote, item, file)

    def _whole(self, remote: Remote, item: _Object, file: Path) -> None:
        options = {"if_match": item.e_tag} if item.e_tag else None
        result = obstore.get(remote.store, item.key, options=options)  # type: ignore[arg-type]
        written = 0
        with file.open("wb") as handle:
            for chunk in result.stream(min_chunk_size=PART_SIZE):
                self._check()
                handle.write(chunk)
                written += len(chunk)
        if written != item.size:
            raise OSError(f"got {written} bytes of {item.size}")

    def _ranges(self, remote: Remote, item: _Object, file: Path) -> None:
        with file.open("wb") as handle:
            handle.truncate(item.size)

        def fetch(start: int) -> None:
            self._check()
            end = min(start + PART_SIZE, item.size)
            options = {"if_match": item.e_tag, "range": (start, end)}
            data = obstore.get(remote.store, item.key, options=options).bytes()  # type: ignore[arg-type]
            if len(data) != end - start:
                raise OSError(f"got {len(data)} bytes of range {start}-{end}")
            descriptor = os.open(file, os.O_WRONLY)
            try:
                os.pwrite(descriptor, data, start)  # type: ignore[arg-type]
            finally:
                os.close(descriptor)

        # Threads of this object's own: waiting on the fetcher's pool from its own thread could
        # wait forever behind the other objects' fetches.
        with ThreadPoolExecutor(PARTS_AT_ONCE, thread_name_prefix="download-range") as ranges:
            for _ in ranges.map(fetch, range(0, item.size, PART_SIZE)):
                pass

    def _check(self) -> None:
        if self._abandoned.is_set():
            raise OSError("download abandoned")


# -- uploads ---------------------------------------------------------------------------------------


async def upload(remote: Remote, attempt: int, report: Report) -> Manifest:
    """Publishes the output directory at ``remote.path`` under ``remote.key`` (see the module
    docstring) and returns its manifest. Raises ``TransferError``."""
    store, key = remote.store, remote.key
    if not key:  # its leftovers would be the whole store
        raise TransferError(f"{remote.what} cannot be the root of datastore {remote.datastore}")
    try:
        files = await asyncio.to_thread(_files, remote.path, remote.within)
    except OSError as exc:
        raise TransferError(f"{remote.what}: cannot read {remote.path}: {_reason(exc)}") from None
    except _LinkOut as exc:
        raise TransferError(f"{remote.what}: {exc}") from None
    progress = _Progress(report, remote.what, len(files), sum(file.size for file in files.values()))
    await report(f"uploading {remote.what} to {remote.uri}: {progress.total}")
    written = {posixpath.join(key, path) for path in files}
    try:
        await _not_superseded(remote, attempt)
        # A previous attempt's manifest first: no reader may take its files for this attempt's.
        await obstore.delete_async(store, manifest_key(key))
        leftovers = [
            meta["path"]
            async for chunk in obstore.list(store, key)
            for meta in chunk
            if meta["path"] not in written
        ]
        if leftovers:
            await obstore.delete_async(store, leftovers)
    except BaseError as exc:
        raise TransferError(f"{remote.what}: cannot clear {remote.uri}: {_reason(exc)}") from None
    entries: list[ManifestFile] = []

    async def one(path: str) -> None:
        object_key = posixpath.join(key, path)
        try:
            entries.append(await _put(remote, object_key, path, files[path]))
        except (BaseError, OSError, ValueError) as exc:  # ValueError: a name no key can have
            raise TransferError(_failure(f"{remote.what}: cannot upload", remote, object_key, exc)) from None
        progress.add(files[path].size)

    async with progress.reporting():
        await _each(one, list(files))
    manifest = Manifest(files=sorted(entries, key=lambda entry: entry.path), attempt=attempt)
    try:
        await obstore.put_async(store, manifest_key(key), encode_manifest(manifest))
    except BaseError as exc:
        raise TransferError(f"{remote.what}: cannot write its manifest: {_reason(exc)}") from None
    await report(f"uploaded {remote.what}: {progress.summary()}")
    return manifest


class _LinkOut(Exception):
    """A path of an output leads out of the step run's staging directory."""


@dataclass(frozen=True, slots=True)
class _File:
    size: int
    identity: tuple[int, int]
    """(device, inode) of the file the listing saw: the upload reads that file or fails."""


async def _not_superseded(remote: Remote, attempt: int) -> None:
    """Raises ``TransferError`` when a later attempt of the step run published the output: this one
    was given up as lost (its agent cut off from the daemon) and its clearing would unpublish the
    output that downstream steps are reading."""
    try:
        manifest = await read_manifest(remote.store, manifest_key(remote.key))
    except StoreError:  # unreadable: nobody's output, replaced
        return
    if manifest is not None and manifest.attempt > attempt:
        raise TransferError(
            f"{remote.what}: attempt {manifest.attempt} published {remote.uri} already; "
            f"attempt {attempt} leaves it as it is"
        )


def _files(root: Path, within: Path) -> dict[str, _File]:
    """The files under ``root`` by their path under it (links to files followed, links to
    directories not). Raises ``_LinkOut`` for ``root``, or a link under it, that leads out of
    ``within``: the step made them, and the agent must not upload what it can read and the step
    cannot (a container's link to the host's ``/etc/shadow``, the agent's credentials)."""
    allowed = os.path.realpath(within)

    def confined(path: str) -> None:
        real = os.path.realpath(path)
        if os.path.commonpath([real, allowed]) != allowed:
            raise _LinkOut(f"{path} leads out of the step's staging directory, to {real}")

    confined(str(root))
    files: dict[str, _File] = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            if path.is_symlink():
                confined(str(path))
            if path.is_file():
                stat = path.stat()
                files[path.relative_to(root).as_posix()] = _File(stat.st_size, (stat.st_dev, stat.st_ino))
    return files


async def _put(remote: Remote, key: str, relative: str, file: _File) -> ManifestFile:
    """Uploads one file (as listed), hashing it as it is read: whole when small, in parts when big."""
    reader = _HashingReader(remote.path / relative, file.identity)
    try:
        if file.size <= WHOLE_TRANSFER_MAX:
            data = await asyncio.to_thread(reader.read_all)
            result = await obstore.put_async(remote.store, key, data, use_multipart=False)
        else:
            # obstore pulls the parts on its own threads: reading and hashing stay off the loop.
            result = await obstore.put_async(
                remote.store,
                key,
                reader.chunks(),
                chunk_size=part_size(file.size),
                max_concurrency=PARTS_AT_ONCE,
            )
    finally:
        reader.close()
    return ManifestFile(path=relative, size=reader.size, e_tag=result["e_tag"], sha256=reader.hexdigest())


def part_size(size: int) -> int:
    """The part size of a multipart upload of ``size`` bytes: ``PART_SIZE``, or the whole MiBs that
    keep it within ``MAX_PARTS`` parts."""
    return max(PART_SIZE, -(-size // (MAX_PARTS * 1024**2)) * 1024**2)


class _HashingReader:
    """A file read once, front to back, with its SHA-256 and size taken on the way."""

    def __init__(self, path: Path, identity: tuple[int, int]) -> None:
        self._path = path
        self._identity = identity
        self._file: IO[bytes] | None = None
        self._digest = hashlib.sha256()
        self.size = 0

    def read_all(self) -> bytes:
        return b"".join(self.chunks())

    def chunks(self) -> Iterator[bytes]:
        self._file = self._path.open("rb")
        stat = os.fstat(self._file.fileno())
        if (stat.st_dev, stat.st_ino) != self._identity:  # swapped since listed: maybe for a link out
            raise OSError(f"{self._path} was replaced while the output was uploading")
        while chunk := self._file.read(PART_SIZE):
            self._digest.update(chunk)  # releases the GIL: parts hash in parallel with uploads
            self.size += len(chunk)
            yield chunk

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# -- logs ------------------------------------------------------------------------------------------


class LogShipper:
    """Uploads an attempt's log file to its key while it grows and once at the end."""

    def __init__(self, remote: Remote) -> None:
        self._remote = remote
        self._shipped: tuple[int, int] | None = None

    async def run(self) -> None:
        """Uploads every ``log_upload_interval`` when the file changed, until cancelled."""
        while True:
            await asyncio.sleep(log_upload_interval(self._shipped[0] if self._shipped else 0))
            try:
                await self.ship()
            except TransferError as exc:  # the next round, or the last, tries again
                log.warning("log_upload_failed", error=str(exc))

    async def ship(self) -> None:
        """Uploads the file if it changed since the last upload. Raises ``TransferError``."""
        path = self._remote.path
        try:
            stat = await asyncio.to_thread(path.stat)
            seen = (stat.st_size, stat.st_mtime_ns)
            if seen == self._shipped:
                return
            # From the file: obstore reads it in parts, never the whole log in memory.
            await obstore.put_async(self._remote.store, self._remote.key, path)
        except FileNotFoundError:
            return
        except (BaseError, OSError) as exc:
            raise TransferError(f"log: cannot upload to {self._remote.uri}: {_reason(exc)}") from None
        self._shipped = seen


def log_upload_interval(size: int) -> float:
    """Seconds between uploads of a log last uploaded at ``size`` bytes."""
    return max(LOG_UPLOAD_INTERVAL_S, size / LOG_UPLOAD_BYTES_PER_S)


# -- shared ----------------------------------------------------------------------------------------


async def _each(work: Callable[[T], Awaitable[None]], items: list[T]) -> None:
    """``work`` on every item, ``FILES_AT_ONCE`` at a time; the first failure cancels the rest."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await work(item)

    try:
        async with asyncio.TaskGroup() as group:
            for number in range(min(FILES_AT_ONCE, len(items))):
                group.create_task(worker(), name=f"transfer-{number}")
    except ExceptionGroup as failed:  # the first failure is the reason; the rest were cancelled by it
        raise failed.exceptions[0] from None


class _Progress:
    """Counts a transfer's files and bytes; reports them every ``PROGRESS_INTERVAL_S`` meanwhile."""

    def __init__(self, report: Report, what: str, files: int, size: int) -> None:
        self._report = report
        self._what = what
        self._files = files
        self._size = size
        self._done_files = 0
        self._done_bytes = 0
        self._started = time.monotonic()

    @property
    def total(self) -> str:
        return f"{_count(self._files)}, {_mib(self._size)}"

    def add(self, size: int) -> None:
        self._done_files += 1
        self._done_bytes += size

    def summary(self) -> str:
        elapsed = time.monotonic() - self._started
        rate = self._done_bytes / 1024**2 / elapsed if elapsed > 0 else 0.0
        return f"{self.total} in {elapsed:.1f} s ({rate:.0f} MiB/s)"

    @contextlib.asynccontextmanager
    async def reporting(self):
        async def ticker() -> None:
            while True:
                await asyncio.sleep(PROGRESS_INTERVAL_S)
                await self._report(
                    f"{self._what}: {self._done_files} of {_count(self._files)}, "
                    f"{_mib(self._done_bytes)} of {_mib(self._size)}"
                )

        task = asyncio.create_task(ticker(), name="transfer-progress")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _count(files: int) -> str:
    return "1 file" if files == 1 else f"{files} files"


def _mib(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB"


def _failure(what: str, remote: Remote, key: str, exc: BaseException) -> str:
    if isinstance(exc, obstore.exceptions.PreconditionError):
        reason = "it changed since it was listed or published (its ETag differs)"
    else:
        reason = _reason(exc)
    return f"{what} {remote.location.uri(key)}: {reason}"


def _reason(exc: BaseException) -> str:
    """One line of an error: a local file's, or the store's (:func:`kit.objectstore.reason_of`)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return reason_of(exc)
