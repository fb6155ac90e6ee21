"""The agent's cache of objects downloaded from ``s3`` datastores, so that an input reused by later
attempts is fetched once.

Under ``<cache_dir>/objects/``, one read-only file per object version: named by a digest of
(endpoint, bucket, key, ETag), so a rewritten object (new ETag) is another entry and a stale one is
never served. A download goes to a temporary file, is placed into the attempt's tree, then renamed
into the cache: nobody sees half an object, several agents may share the cache dir, and an entry
evicted at any moment leaves the attempts that hold it their file.

An object is placed as a read-only hard link, or as a copy for a step in a container: the container
sees its inputs but not the cache, and may be root there (a setuid program in its image) and write
through a link in place, at the same size, unseen. A step running as the agent's user can reach the
cache anyway; one that writes through its link (made writable) changes the entry's size or mode, and
such an entry is dropped rather than served.

Eviction keeps the cache under a size cap, least recently used first (a hit refreshes the entry's
mtime); entries linked into an attempt's tree (more than one link) stay, removing them would free
nothing. Everything that touches files runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

DEFAULT_CAP = 10 * 1024**3
PARTIAL_PREFIX = ".partial-"
STALE_PARTIAL_S = 3600.0
"""A temporary file this old belongs to a download that died with its agent."""
COPY_CHUNK = 1024**3
COPY_RANGE_REFUSED = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
"""``copy_file_range`` cannot copy between such files (on two filesystems, or one that does not
support it): they are copied by reading and writing."""

Fetch = Callable[[Path], Awaitable[None]]
"""Writes an object's content to the given (new, empty) file; raises what the download raises."""


class ObjectCache:
    def __init__(self, root: Path, cap: int = DEFAULT_CAP) -> None:
        self.root = root
        self.cap = cap
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def entry(self, identity: tuple[str, ...]) -> Path:
        digest = hashlib.sha256("\0".join(identity).encode()).hexdigest()
        return self.root / digest[:2] / digest

    async def place(
        self, identity: tuple[str, ...], size: int, dest: Path, fetch: Fetch, *, copy: bool = False
    ) -> bool:
        """Puts the object named by ``identity`` (``size`` bytes) at ``dest``, read-only: a hard link
        to the entry, or with ``copy`` a file of its own. Fetches it with ``fetch`` unless cached.
        Returns True for a cache hit."""
        path = self.entry(identity)
        # One download per object on this agent even when several inputs or attempts want it at once.
        # (A lock lives as long as someone holds or awaits it: the map does not grow with the cache.)
        if (lock := self._locks.get(path.name)) is None:
            lock = self._locks[path.name] = asyncio.Lock()
        async with lock:
            if await asyncio.to_thread(_place_cached, path, size, dest, copy):
                return True
            partial = await asyncio.to_thread(_partial, path)
            try:
                await fetch(partial)
                await asyncio.to_thread(_install, partial, path, dest, copy)
            finally:
                await asyncio.to_thread(_remove, partial)
            return False

    async def evict(self) -> None:
        """Removes least recently used entries until the cache holds at most ``cap`` bytes."""
        removed, freed = await asyncio.to_thread(_evict, self.root, self.cap)
        if removed:
            log.info("object_cache_evicted", entries=removed, freed=freed, cap=self.cap)


def _place_cached(path: Path, size: int, dest: Path, copy: bool) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if stat.st_size != size or stat.st_mode & 0o222:
        # Written through an attempt's link (a step that made its input writable, or ran as root
        # and appended to it): no longer the version its name says; the attempts that hold it
        # keep it, the next one fetches the object again.
        log.warning("object_cache_entry_altered", entry=path.name, size=stat.st_size, expected=size)
        _remove(path)
        return False
    try:
        _put(path, dest, copy)
    except FileNotFoundError:
        if not dest.parent.is_dir():
            raise
        return False  # evicted since
    os.utime(path)  # recently used
    return True


def _partial(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=path.parent)
    os.close(handle)
    return Path(name)


def _install(partial: Path, path: Path, dest: Path, copy: bool) -> None:
    partial.chmod(0o444)
    _put(partial, dest, copy)  # first: the attempt has its file whatever happens to the cache
    os.rename(partial, path)


def _put(source: Path, dest: Path, copy: bool) -> None:
    if not copy:
        os.link(source, dest)
        return
    try:
        with source.open("rb") as reader, dest.open("xb") as writer:
            # Shares the blocks where the filesystem can (a reflink on Btrfs or XFS), copies in the
            # kernel elsewhere.
            while os.copy_file_range(reader.fileno(), writer.fileno(), COPY_CHUNK):
                pass
    except OSError as exc:
        if exc.errno not in COPY_RANGE_REFUSED:
            raise
        shutil.copyfile(source, dest)  # rewrites what the refused attempt began
    dest.chmod(0o444)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _evict(root: Path, cap: int) -> tuple[int, int]:
    entries: list[tuple[float, int, Path]] = []
    total = 0
    now = time.time()
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if name.startswith(PARTIAL_PREFIX):
                if now - stat.st_mtime > STALE_PARTIAL_S:
                    _remove(path)
                continue
            total += stat.st_size
            if stat.st_nlink == 1:
                entries.append((stat.st_mtime, stat.st_size, path))
    removed = freed = 0
    for _, size, path in sorted(entries):
        if total <= cap:
            break
        _remove(path)
        total -= size
        removed, freed = removed + 1, freed + size
    return removed, freed
