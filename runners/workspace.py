"""An agent's directories: cached source snapshots and one fresh directory per attempt.

Under the cache dir::

    sources/<digest>/          a snapshot, extracted once, shared by attempts (never written to)
    attempts/<attempt_id>/     one attempt: work/ (its working directory, a copy of the snapshot)
                               and metrics.jsonl (its SLUICE_METRICS file)
    staging/<run>/<step>/      the roots of the s3 datastores of a step run (``runners.staging``):
                               its inputs, downloaded before it starts, its outputs and log
    objects/                   objects downloaded from s3 datastores (``runners.objectcache``)

Several agents may share a cache dir: a snapshot is extracted into a temporary directory and renamed
into place, so nobody ever sees half of one. Everything that touches files runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from kit.nats import BusError
from runners.objectcache import DEFAULT_CAP, ObjectCache
from runners.protocol import Assignment
from runners.staging import Staging, misplaced_stores, staging_dir
from runners.transfers import Report, TransferError, download

log = structlog.get_logger(__name__)

_DIGEST = re.compile(r"[a-z0-9]+:[0-9a-f]{16,128}")


class PrepareError(Exception):
    """The attempt's directories cannot be made ready; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class AttemptDirs:
    root: Path
    work: Path
    metrics: Path


class Workspace:
    def __init__(
        self,
        cache_dir: Path,
        fetch_source: Callable[[str], Awaitable[bytes]],
        object_cache_cap: int = DEFAULT_CAP,
    ) -> None:
        """``fetch_source(digest)`` returns a snapshot archive (an uncompressed tar) or raises
        ``BusError``; ``object_cache_cap`` bounds the bytes of cached objects."""
        self.cache_dir = cache_dir
        self.staging = staging_dir(cache_dir)
        self._fetch_source = fetch_source
        self._objects = ObjectCache(cache_dir / "objects", object_cache_cap)
        self._locks: dict[str, asyncio.Lock] = {}

    def attempt_dirs(self, attempt_id: int) -> AttemptDirs:
        root = self.cache_dir / "attempts" / str(attempt_id)
        return AttemptDirs(root=root, work=root / "work", metrics=root / "metrics.jsonl")

    async def prepare(self, assignment: Assignment, staging: Staging | None, report: Report) -> AttemptDirs:
        """A clean attempt directory whose ``work`` holds the source snapshot (or nothing), the
        assignment's output directories, and its inputs in ``s3`` datastores downloaded into
        ``staging`` (progress lines through ``report``). Raises ``PrepareError``."""
        snapshot = await self.snapshot(assignment.source_digest) if assignment.source_digest else None
        dirs = self.attempt_dirs(assignment.attempt_id)
        try:
            await asyncio.to_thread(_prepare_dirs, dirs, snapshot, assignment)
        except OSError as exc:
            raise PrepareError(f"cannot prepare the work directory: {_describe(exc)}") from exc
        in_container = assignment.image is not None  # may write as root where a link would reach the cache
        for remote in staging.inputs if staging is not None else []:
            try:
                await download(remote, self._objects, report, copy=in_container)
            except TransferError as exc:
                raise PrepareError(str(exc)) from None
        return dirs

    async def cleanup(self, dirs: AttemptDirs) -> None:
        """Removes an attempt's directory (its outputs live elsewhere, in the datastore)."""
        await asyncio.to_thread(shutil.rmtree, dirs.root, True)

    async def unstage(self, staging: Staging) -> None:
        """Removes a step run's staging directory: before an attempt, what an earlier one (of an
        agent that died) left; after it, everything (its outputs and log are in their store)."""
        await asyncio.to_thread(_unstage, staging.root)

    async def evict_objects(self) -> None:
        """Keeps the object cache within its cap."""
        await self._objects.evict()

    async def snapshot(self, digest: str) -> Path:
        """The extracted snapshot named ``digest``, fetched and extracted on first use."""
        if not _DIGEST.fullmatch(digest):
            raise PrepareError(f"bad source digest {digest!r}")
        path = self.cache_dir / "sources" / digest.replace(":", "-")
        # One fetch per digest in this agent even when several attempts need it at once.
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if await asyncio.to_thread(path.is_dir):
                return path
            try:
                archive = await self._fetch_source(digest)
            except BusError as exc:
                raise PrepareError(str(exc)) from exc
            try:
                await asyncio.to_thread(_extract, archive, path)
            except (OSError, tarfile.TarError) as exc:
                raise PrepareError(f"cannot extract source snapshot {digest}: {_describe(exc)}") from exc
            log.info("source_cached", digest=digest, size=len(archive))
            return path


def _extract(archive: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".extract-", dir=path.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            # "data": no absolute paths, no "..", no links out of the tree, no device files.
            tar.extractall(temporary, filter="data")
        try:
            os.rename(temporary, path)
        except OSError:
            if not path.is_dir():
                raise
            # Another agent on this cache dir extracted the same snapshot first: same content.
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _prepare_dirs(dirs: AttemptDirs, snapshot: Path | None, assignment: Assignment) -> None:
    shutil.rmtree(dirs.root, ignore_errors=True)  # left by an earlier life of this agent
    dirs.root.mkdir(parents=True)
    if snapshot is not None:
        shutil.copytree(snapshot, dirs.work, symlinks=True)
    else:
        dirs.work.mkdir()
    for output in assignment.outputs.values():
        Path(output).mkdir(parents=True, exist_ok=True)


def _unstage(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):  # the run's directory, once its last step run left it
        root.parent.rmdir()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def misplaced(assignment: Assignment, cache_dir: Path, declared: Mapping[str, str]) -> str | None:
    """Why the assignment's paths are not this agent's to write, or None when they are.

    An attempt writes its log and outputs under the datastores it names (or the agent's cache), a
    datastore the agent declares (``--datastore NAME=PATH``) must be where the agent says, and an
    ``s3`` datastore's root must be the step run's own under the agent's staging directory. Checked
    on the paths as written (``..`` resolved, symlinks not followed), so it costs no I/O.
    """
    if (where := misplaced_stores(assignment, staging_dir(cache_dir))) is not None:
        return where
    for name, root in assignment.datastores.items():
        if not posixpath.isabs(root):
            return f"datastore {name} has a relative root {root!r}"
        if name in declared and posixpath.normpath(root) != posixpath.normpath(declared[name]):
            return f"datastore {name} is at {declared[name]} on this agent, not at {root}"
    roots = [str(cache_dir), *assignment.datastores.values()]
    paths = {"log": assignment.log_path} | {
        f"output {name}": path for name, path in assignment.outputs.items()
    }
    for what, path in paths.items():
        if not any(_within(path, root) for root in roots):
            return f"{what} {path} is outside this agent's cache dir and the attempt's datastores"
    return None


def _within(path: str, root: str) -> bool:
    if not posixpath.isabs(path) or "\0" in path:
        return False
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def confine(assignment: Assignment, cache_dir: Path) -> None:
    """Checks, symlinks followed, that the attempt's log, inputs and outputs lie under its
    datastores (or the cache dir): a link inside a datastore must not lead a step, or the agent, to
    read or write a file elsewhere. Blocking (it walks input trees for links): for a worker thread.

    Raises ``PrepareError`` naming the path and where it leads.
    """
    roots = [os.path.realpath(root) for root in (str(cache_dir), *assignment.datastores.values())]
    paths = {"log": assignment.log_path}
    paths |= {f"input {name}": path for name, path in assignment.inputs.items()}
    paths |= {f"output {name}": path for name, path in assignment.outputs.items()}
    for what, path in paths.items():
        for link, real in _resolved(path):
            if not any(_within(real, root) for root in roots):
                shown = path if link == path else f"{link} (under {path})"
                raise PrepareError(f"{what} {shown} leads out of the attempt's datastores, to {real}")


def _resolved(path: str):
    """``path`` and every symlink under it (a tree is walked, links not followed), each with the
    real path it leads to."""
    yield path, os.path.realpath(path)
    if not os.path.isdir(path):
        return
    for directory, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            entry = os.path.join(directory, name)
            if os.path.islink(entry):
                yield entry, os.path.realpath(entry)
