"""Source snapshots: a pipeline's source directory as a deterministic archive and its digest.

The digest covers content, not circumstance: each regular file's and symlink's relative path, kind,
executable bit and content (a symlink's content is its target). mtimes, owners, other mode bits, the
order the filesystem lists entries in, and empty directories do not count, so the same tree gives
the same digest on any machine. The archive is an uncompressed PAX tar of exactly those entries,
sorted, with mtime 0, owner 0 and modes 0644/0755, so it is byte-for-byte reproducible as well.

Everything here blocks on the filesystem: call it from a thread.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path, PurePosixPath

import msgspec

from daemon.errors import Invalid

# Never part of a snapshot: caches, and git metadata (a directory, or a file in worktrees and submodules).
SKIPPED_NAMES = frozenset({"__pycache__", ".git"})
# A snapshot lives in memory and travels as one message; a directory larger than this is a mistake.
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024


class SourceError(Invalid):
    """A source directory or archive that cannot be snapshotted, verified or extracted."""


class Snapshot(msgspec.Struct, frozen=True):
    """``files`` entries (regular files and symlinks) of ``size`` content bytes in total."""

    digest: str
    archive: bytes
    files: int
    size: int


class _Entry(msgspec.Struct, frozen=True):
    path: str  # relative, POSIX
    kind: str  # "file" or "symlink"
    executable: bool
    content: bytes  # a symlink's target, as bytes

    @property
    def mode(self) -> int:
        return 0o755 if self.executable else 0o644


def snapshot_directory(path: Path, *, max_bytes: int = MAX_SNAPSHOT_BYTES) -> Snapshot:
    """The snapshot of directory ``path``. Symlinks are stored as links, never followed.

    Raises ``SourceError`` when ``path`` is missing or not a directory, holds something other than
    files, directories and symlinks, a name that is not UTF-8, or more than ``max_bytes`` of content.
    """
    if not path.exists():
        raise SourceError(f"source directory {path} does not exist")
    if not path.is_dir():
        raise SourceError(f"source {path} is not a directory")
    entries = sorted(_walk(path, path, max_bytes, [0]), key=lambda entry: entry.path)
    return Snapshot(
        digest=_digest(entries),
        archive=_archive(entries),
        files=len(entries),
        size=sum(len(entry.content) for entry in entries if entry.kind == "file"),
    )


def archive_digest(archive: bytes) -> str:
    """The digest of the tree in ``archive`` as ``snapshot_directory`` would give it for that tree,
    whatever the archive's order, timestamps and owners; directory entries are ignored.

    Raises ``SourceError`` for an archive that is not a tar, holds other kinds of entries, the same
    path twice, or paths that are absolute or contain ``..``.
    """
    entries: dict[str, _Entry] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar:
                if member.isdir():
                    continue
                path = _member_path(member.name)
                if path in entries:
                    raise SourceError(f"source archive holds {path} twice")
                entries[path] = _member_entry(tar, member, path)
    except tarfile.TarError as exc:
        raise SourceError(f"bad source archive: {exc}") from None
    return _digest(sorted(entries.values(), key=lambda entry: entry.path))


def extract_snapshot(archive: bytes, dest: Path) -> None:
    """Extracts ``archive`` into ``dest`` (created if needed). Refuses absolute paths, ``..``, links
    that point outside ``dest`` and special files, raising ``SourceError``."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            tar.extractall(dest, filter="data")
    except tarfile.TarError as exc:
        raise SourceError(f"bad source archive: {exc}") from None


def _walk(root: Path, directory: Path, max_bytes: int, total: list[int]) -> list[_Entry]:
    entries = []
    with os.scandir(directory) as scan:
        items = sorted(scan, key=lambda item: item.name)
    for item in items:
        if item.name in SKIPPED_NAMES:
            continue
        relative = Path(item.path).relative_to(root).as_posix()
        _check_name(relative)
        status = item.stat(follow_symlinks=False)
        if stat.S_ISLNK(status.st_mode):
            target = os.fsencode(os.readlink(item.path))
            entries.append(_Entry(relative, "symlink", _is_executable(status.st_mode), target))
        elif stat.S_ISDIR(status.st_mode):
            entries.extend(_walk(root, Path(item.path), max_bytes, total))
        elif stat.S_ISREG(status.st_mode):
            total[0] += status.st_size
            if total[0] > max_bytes:
                raise SourceError(f"source directory {root} holds more than {max_bytes} bytes")
            content = Path(item.path).read_bytes()
            entries.append(_Entry(relative, "file", _is_executable(status.st_mode), content))
        else:
            raise SourceError(f"{item.path} is neither a file, a directory nor a symlink")
    return entries


def _check_name(relative: str) -> None:
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        raise SourceError(f"file name {relative!r} is not UTF-8") from None
    if "\n" in relative:
        raise SourceError(f"file name {relative!r} contains a newline")


def _is_executable(mode: int) -> bool:
    return bool(mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))


def _digest(entries: list[_Entry]) -> str:
    """sha256 of the manifest: one line ``<kind> <mode> <path> <sha256 of content>`` per entry."""
    manifest = hashlib.sha256()
    for entry in entries:
        content = hashlib.sha256(entry.content).hexdigest()
        manifest.update(f"{entry.kind} {entry.mode:o} {entry.path} {content}\n".encode())
    return "sha256:" + manifest.hexdigest()


def _archive(entries: list[_Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.mode = entry.mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = os.fsdecode(entry.content)
                tar.addfile(info)
            else:
                info.size = len(entry.content)
                tar.addfile(info, io.BytesIO(entry.content))
    return buffer.getvalue()


def _member_path(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise SourceError(f"source archive holds an unsafe path {name!r}")
    relative = path.as_posix()
    _check_name(relative)
    return relative


def _member_entry(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> _Entry:
    executable = _is_executable(member.mode)
    if member.issym():
        return _Entry(path, "symlink", executable, os.fsencode(member.linkname))
    if member.isreg():
        stream = tar.extractfile(member)
        assert stream is not None  # a regular member always has a stream
        return _Entry(path, "file", executable, stream.read())
    raise SourceError(f"source archive holds {path}, which is neither a file nor a symlink")
