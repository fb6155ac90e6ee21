"""Fingerprints of datastore data: has what a step reads changed since an earlier run?

A step's fingerprint includes one of these for each datastore input, so a step is reused
only when these match. A fingerprint is ``sha256:<hex>`` over a list of entries, one per thing found
under the path, sorted by its path relative to the fingerprinted path (POSIX separators):

- each regular file: its relative path, its size and, in ``listing`` mode (the default), its
  ``mtime_ns``; in ``content`` mode (an input's ``hash: content``), the sha256 of its bytes instead;
- each directory below the path, empty or not: its relative path, so adding an empty directory is a
  change (a step that lists directories, one per class say, would see it);
- each symlink to a directory: its relative path and its target text. Directory symlinks are not
  followed (that is how loops are avoided), so a change behind one goes unseen; retargeting it shows.

A symlink to a file counts as the file it points to; a broken (or looping) symlink, and anything that
is neither a file nor a directory (sockets, FIFOs, devices), is left out. The fingerprinted path itself
is followed when it is a symlink. With ``within`` (the datastore's root), data that a symlink puts
outside it is never read: it is unreadable. A single file is fingerprinted as one entry named by its own name,
and the mode and the kind of root (file or tree) go in first, so a file and a directory holding only
that file differ, as do the listing and the content fingerprints of the same data.

Listing costs one ``stat`` per file. It catches a file added, removed, renamed or resized, and a
rewrite (a write moves mtime); it also takes a ``touch`` that changes nothing for a change. Content
reads every byte, once: digests are cached per file, so a second fingerprint of unchanged data costs
about what listing costs (a stat and a cache lookup per file). It ignores a touch (so does data
regenerated identically, which then still reuses), and it catches what listing misses: a rewrite that
keeps the size and puts the mtime back (``os.utime``, copies that keep times), or two same-size writes
within one tick of a coarse filesystem clock (2 s on FAT).

A path that does not exist has the fingerprint :data:`MISSING`; one that cannot be read raises
:class:`DataUnreadable`. The fingerprint of a tree changing while it is walked reflects some moment of
the walk; a file that disappears mid-walk is left out.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import os
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from daemon.errors import SluiceError
from daemon.rules.partitions import Partition, files

MISSING = "missing"
"""The fingerprint of a path that does not exist: stable, and never equal to the fingerprint of data."""

FORMAT = "sluice-data-fingerprint/1"
"""Hashed first: bump it when what goes into a fingerprint changes, so old fingerprints stop matching."""

DEFAULT_MAX_CACHED_FILES = 1_000_000
"""About 300 bytes each (path included), so some 300 MB when full."""

DEFAULT_MIN_AGE_S = 2.0
"""A file changed more recently than this before it was read is read again next time, not cached:
a second write of the same size within the filesystem's timestamp tick would leave its stat as it was.
2 s covers the coarsest clock in use (FAT) and a kernel's coarse clock lagging ``time.time_ns``."""

_SIGNATURE = struct.Struct("<QQqqq")  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


class DataUnreadable(SluiceError):
    """A file or directory under a fingerprinted path cannot be read (permissions, I/O error)."""

    code = "data_unreadable"
    status = 422

    def __init__(self, path: str, reason: OSError | str) -> None:
        why = (reason.strerror or str(reason)) if isinstance(reason, OSError) else reason
        super().__init__(f"cannot read {path}: {why}")
        self.path = path


class DataFingerprints:
    """Fingerprints of local files and directory trees, one instance per daemon (it holds the cache).

    Every filesystem call runs in the event loop's default executor. Calls for the same (path, mode)
    made while one is being computed share its result, so a burst of runs reading one input walks it
    once; a call made after it finished computes afresh (listings are never cached, only digests).
    """

    def __init__(
        self, *, max_cached_files: int = DEFAULT_MAX_CACHED_FILES, min_age_s: float = DEFAULT_MIN_AGE_S
    ) -> None:
        self._digests = _DigestCache(max_cached_files, min_age_ns=round(min_age_s * 1e9))
        self._computing: dict[tuple[str, bool], asyncio.Future[str]] = {}

    @property
    def cached_files(self) -> int:
        """How many file digests the cache holds."""
        return len(self._digests)

    async def of(
        self, path: str | os.PathLike[str], *, content: bool = False, within: str | None = None
    ) -> str:
        """The fingerprint of the file or directory tree at ``path``: ``sha256:<hex>``, or
        :data:`MISSING` when nothing is there. ``content`` hashes file bytes instead of mtimes.

        Cancelling a call leaves the shared computation running for the other callers.

        Raises:
            DataUnreadable: a file or directory under ``path`` cannot be read, or a symlink takes
                ``path`` or a file under it out of ``within``; names it.
        """
        key = (os.fspath(path), content, within)
        computing = self._computing.get(key)
        if computing is None:
            compute = functools.partial(
                _fingerprint, key[0], content=content, digests=self._digests, within=within
            )
            computing = asyncio.get_running_loop().run_in_executor(None, compute)
            self._computing[key] = computing
            computing.add_done_callback(functools.partial(self._finished, key))
        return await asyncio.shield(computing)

    async def partitions(
        self,
        path: str,
        matches: Callable[[str], bool],
        per: int,
        previous: Mapping[int, Sequence[str]] | None,
        *,
        content: bool = False,
        within: str | None = None,
    ) -> list[tuple[Partition, str]]:
        """The files under the directory ``path`` whose relative paths ``matches``, in partitions of
        up to ``per`` (:func:`daemon.rules.partitions.files`, sticky to ``previous``), each with the
        fingerprint of its own files only; listed and fingerprinted in a worker thread. Nothing at
        ``path``: no partition.

        Raises:
            DataUnreadable: as :meth:`of`.
        """
        compute = functools.partial(
            _partitions, path, matches, per, previous, content=content, digests=self._digests, within=within
        )
        return await asyncio.get_running_loop().run_in_executor(None, compute)

    def _finished(self, key: tuple[str, bool, str | None], computing: asyncio.Future[str]) -> None:
        del self._computing[key]
        if not computing.cancelled():
            computing.exception()  # marks it retrieved: every caller may have been cancelled meanwhile


class _File(NamedTuple):
    relative: str
    path: str
    stat: os.stat_result


class _Dir(NamedTuple):
    relative: str


class _DirLink(NamedTuple):
    relative: str
    target: str


_Entry = _File | _Dir | _DirLink


def _fingerprint(path: str, *, content: bool, digests: _DigestCache, within: str | None = None) -> str:
    """The fingerprint of ``path``, computed here and now: blocking, for a worker thread."""
    path = os.path.abspath(path)  # digests are cached by absolute path
    try:
        if within is not None:
            _confined(path, os.path.realpath(within))
        root = os.stat(path)
        if stat.S_ISREG(root.st_mode):
            kind, entries = "file", [_File(os.path.basename(path), path, root)]
        elif stat.S_ISDIR(root.st_mode):
            kind, entries = "tree", _walk(path, None if within is None else os.path.realpath(within))
        else:
            raise DataUnreadable(path, "neither a regular file nor a directory")
    except OSError as error:
        if _is_gone(error):
            return MISSING
        raise DataUnreadable(path, error) from error
    hasher = hashlib.sha256(record(FORMAT, "content" if content else "listing", kind))
    for entry in sorted(entries, key=lambda entry: entry.relative):
        hasher.update(_entry_record(entry, content, digests))
    return f"sha256:{hasher.hexdigest()}"


def _partitions(
    path: str,
    matches: Callable[[str], bool],
    per: int,
    previous: Mapping[int, Sequence[str]] | None,
    *,
    content: bool,
    digests: _DigestCache,
    within: str | None,
) -> list[tuple[Partition, str]]:
    """:meth:`DataFingerprints.partitions`, here and now: blocking, for a worker thread."""
    path = os.path.abspath(path)
    try:
        if within is not None:
            _confined(path, os.path.realpath(within))
        entries = _walk(path, None if within is None else os.path.realpath(within))
    except FileNotFoundError:
        return []
    except OSError as error:
        raise DataUnreadable(path, error) from error
    found = {
        entry.relative: entry for entry in entries if isinstance(entry, _File) and matches(entry.relative)
    }
    made = []
    for partition in files(list(found), per, previous):
        hasher = hashlib.sha256(record(FORMAT, "content" if content else "listing", "partition"))
        for name in partition.files:
            hasher.update(_entry_record(found[name], content, digests))
        made.append((partition, f"sha256:{hasher.hexdigest()}"))
    return made


def _walk(root: str, within: str | None = None) -> list[_Entry]:
    """Every directory, regular file and directory symlink below the directory ``root``, unsorted.

    Raises:
        OSError: ``root`` itself vanished (a gone error, see :func:`_is_gone`).
        DataUnreadable: a directory or a file's metadata cannot be read, or a file symlink leads out
            of ``within`` (a real path).
    """
    entries: list[_Entry] = []
    to_scan = [""]
    while to_scan:  # a stack, not recursion: trees may be deeper than Python's recursion limit
        relative_dir = to_scan.pop()
        directory = os.path.join(root, relative_dir) if relative_dir else root
        try:
            with os.scandir(directory) as scan:
                children = list(scan)
        except OSError as error:
            if not _is_gone(error):
                raise DataUnreadable(directory, error) from error
            if not relative_dir:
                raise
            continue  # removed while we walked
        for child in children:
            entry = _classify(child, f"{relative_dir}/{child.name}" if relative_dir else child.name)
            if within is not None and isinstance(entry, _File) and child.is_symlink():
                _confined(child.path, within)
            if entry is not None:
                entries.append(entry)
                if isinstance(entry, _Dir):
                    to_scan.append(entry.relative)
    return entries


def _classify(child: os.DirEntry[str], relative: str) -> _Entry | None:
    try:
        if child.is_symlink():
            if child.is_dir():
                return _DirLink(relative, os.readlink(child.path))
        elif child.is_dir():
            return _Dir(relative)
        if child.is_file():
            return _File(relative, child.path, child.stat())
    except OSError as error:
        if _is_gone(error):
            return None  # a broken or looping link, or removed while we walked
        raise DataUnreadable(child.path, error) from error
    return None


def _confined(path: str, within: str) -> None:
    """Raises ``DataUnreadable`` when ``path`` (symlinks resolved) lies outside the real path
    ``within``: a link out of a datastore must not make the daemon read what it points to."""
    real = os.path.realpath(path)
    if real != within and not real.startswith(within.rstrip(os.sep) + os.sep):
        raise DataUnreadable(path, f"a symlink takes it out of its datastore, to {real}")


def _entry_record(entry: _Entry, content: bool, digests: _DigestCache) -> bytes:
    match entry:
        case _Dir(relative):
            return record("d", relative)
        case _DirLink(relative, target):
            return record("l", relative, target)
        case _File(relative, _, listed) if not content:
            return record("f", relative, str(listed.st_size), str(listed.st_mtime_ns))
        case _File(relative, path, listed):
            read = digests.get(path, listed) or _read_and_cache(path, digests)
            if read is None:
                return b""  # removed while we walked
            size, digest = read
            return record("f", relative, str(size), digest.hex())
    raise AssertionError(entry)


def record(*fields: str) -> bytes:
    """Fields each ended by NUL, which no path, link target or number holds, so the bytes of a list of
    records read back one way only."""
    return os.fsencode("\0".join(fields) + "\0")


def _read_and_cache(path: str, digests: _DigestCache) -> tuple[int, bytes] | None:
    reading_since = time.time_ns()
    read = _file_digest(path)
    if read is not None:
        digests.put(path, read[0], read[1], reading_since)
        return read[0].st_size, read[1]
    return None


def _file_digest(path: str) -> tuple[os.stat_result, bytes] | None:
    """The sha256 of the regular file at ``path`` and its stat as opened; None when it is gone (or no
    longer a regular file).

    Raises:
        DataUnreadable: it cannot be opened or read.
    """
    try:
        # O_NONBLOCK: a FIFO swapped in since the walk must not block this thread forever
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(descriptor, "rb", buffering=0) as file:
            opened = os.fstat(descriptor)
            if not stat.S_ISREG(opened.st_mode):
                return None
            return opened, hashlib.file_digest(file, "sha256").digest()
    except OSError as error:
        if _is_gone(error):
            return None
        raise DataUnreadable(path, error) from error


def _is_gone(error: OSError) -> bool:
    """Nothing there: missing, a path through a file, or a symlink loop."""
    return isinstance(error, FileNotFoundError | NotADirectoryError) or error.errno == errno.ELOOP


class _DigestCache:
    """File digests by absolute path, each valid while the file's device, inode, size, mtime and ctime
    stay as they were when it was read. ctime is there because it cannot be set: rewriting a file and
    putting its mtime back still moves it; the inode catches a file replaced by another. Least
    recently used entries go first; thread-safe."""

    def __init__(self, max_entries: int, *, min_age_ns: int) -> None:
        self._max_entries = max_entries
        self._min_age_ns = min_age_ns
        self._entries: OrderedDict[str, bytes] = OrderedDict()  # path -> signature + digest
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str, current: os.stat_result) -> tuple[int, bytes] | None:
        """(size, digest) of the file at ``path`` if it is unchanged since it was cached."""
        with self._lock:
            cached = self._entries.get(path)
            if cached is None or cached[: _SIGNATURE.size] != _signature(current):
                return None
            self._entries.move_to_end(path)
        return current.st_size, cached[_SIGNATURE.size :]

    def put(self, path: str, read: os.stat_result, digest: bytes, reading_since_ns: int) -> None:
        """Keep ``digest`` of ``path`` as it was when ``read``, unless it changed too recently before
        the reading began (see :data:`DEFAULT_MIN_AGE_S`)."""
        if read.st_ctime_ns > reading_since_ns - self._min_age_ns:
            return
        with self._lock:
            self._entries[path] = _signature(read) + digest
            self._entries.move_to_end(path)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)


def _signature(of: os.stat_result) -> bytes:
    return _SIGNATURE.pack(of.st_dev, of.st_ino, of.st_size, of.st_mtime_ns, of.st_ctime_ns)
