"""When a file counts as settled, what it became, and how settled files group into batches.

Pure code: callers pass the clock (``now``, in seconds of any monotonic clock) and stat results, so
every rule here is tested without files or timers.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Literal

FileKind = Literal["created", "modified", "deleted", "moved"]


@dataclass(frozen=True, slots=True)
class Signature:
    """What tells one version of a file from another."""

    mtime_ns: int
    size: int

    @property
    def token(self) -> str:
        """This version in a dedupe key."""
        return f"{self.mtime_ns}:{self.size}"

    @property
    def gone_token(self) -> str:
        """This version in the dedupe key of its deletion."""
        return str(self.mtime_ns)


@dataclass(frozen=True, slots=True)
class ObjectSignature:
    """What tells one version of an object in a bucket from another: its ETag, new for every write
    (an overwrite with other bytes, a multipart upload completed), and its size."""

    e_tag: str
    size: int

    @property
    def token(self) -> str:
        return self.e_tag

    @property
    def gone_token(self) -> str:
        return self.e_tag


AnySignature = Signature | ObjectSignature


@dataclass(frozen=True, slots=True)
class Settled:
    """A file that stopped changing, and what happened to it since it was last accounted for.

    ``sig`` is None for a deleted file; ``known`` is what was seen before (None for a new path)."""

    path: str
    kind: FileKind
    sig: AnySignature | None
    known: AnySignature | None = None
    moved_from: str | None = None

    @property
    def dedupe_key(self) -> str:
        """``path:mtime_ns:size`` for a file, ``key:ETag`` for an object; ``path:deleted:…`` once gone."""
        if self.sig is None:
            last = self.known.gone_token if self.known is not None else "0"
            return f"{self.path}:deleted:{last}"
        return f"{self.path}:{self.sig.token}"


def classify(
    path: str,
    sig: AnySignature | None,
    known: AnySignature | None,
    *,
    moved_from: str | None = None,
    moved_from_known: AnySignature | None = None,
) -> Settled | None:
    """What a settled ``path`` (now ``sig``, None if gone) is, given what was seen of it (``known``).
    None when there is nothing new: a path gone that was never seen, or an unchanged file (the
    duplicate ``modified`` events inotify and editors produce)."""
    if sig is None:
        return Settled(path, "deleted", None, known) if known is not None else None
    if moved_from is not None and moved_from_known is not None:
        return Settled(path, "moved", sig, known, moved_from)
    if known is None:
        return Settled(path, "created", sig)
    if known == sig:
        return None
    return Settled(path, "modified", sig, known)


def batch_key(items: Iterable[Settled]) -> str:
    """One dedupe key for a batch: a hash of its files' sorted single-file keys."""
    digest = hashlib.sha256("\n".join(sorted(item.dedupe_key for item in items)).encode())
    return f"batch:{digest.hexdigest()[:40]}"


def wanted(kind: FileKind, events: Collection[str]) -> bool:
    return kind in events


@dataclass(slots=True)
class _Pending:
    sig: AnySignature | None
    changed_at: float
    deadline: float
    moved_from: str | None = None


class Settler:
    """The files of one trigger that are still settling.

    A path is settled once its signature (size and mtime; an object's size and ETag) was the same
    for ``settle`` seconds:
    ``observe`` records each sighting (from a watcher event or a scan), ``due`` says which paths to
    stat again, and ``confirm`` decides with that fresh stat — still the same: settled; changed: it
    settles again from now.
    """

    def __init__(self, settle: float) -> None:
        self.settle = max(0.0, settle)
        self._pending: dict[str, _Pending] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: object) -> bool:
        return path in self._pending

    def paths(self) -> list[str]:
        return list(self._pending)

    def _arm(self, path: str, entry: _Pending, deadline: float) -> None:
        entry.deadline = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), path))

    def observe(
        self, path: str, sig: AnySignature | None, now: float, *, moved_from: str | None = None
    ) -> None:
        """``path`` was seen with ``sig`` (None: missing). A new or changed signature restarts its wait;
        the same one again (a repeated event) does not."""
        entry = self._pending.get(path)
        if entry is None:
            entry = _Pending(sig, now, 0.0, moved_from)
            self._pending[path] = entry
            self._arm(path, entry, now + self.settle)
            return
        if moved_from is not None:
            entry.moved_from = moved_from
        if sig != entry.sig:
            entry.sig = sig
            entry.changed_at = now
            self._arm(path, entry, now + self.settle)

    def forget(self, path: str) -> None:
        self._pending.pop(path, None)

    def postpone(self, path: str, now: float) -> None:
        """A due ``path`` whose signature could not be read now: it is due again a settle later (at
        least a second, so an unreachable store is not asked in a tight loop)."""
        entry = self._pending.get(path)
        if entry is not None:
            self._arm(path, entry, now + max(self.settle, 1.0))

    def moved_from(self, path: str) -> str | None:
        entry = self._pending.get(path)
        return entry.moved_from if entry is not None else None

    def next_deadline(self) -> float | None:
        while self._heap:
            deadline, _, path = self._heap[0]
            entry = self._pending.get(path)
            if entry is not None and entry.deadline == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None

    def due(self, now: float) -> list[str]:
        """Paths whose wait is over, to be stat'ed again and passed to ``confirm``."""
        out: list[str] = []
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            _, _, path = heapq.heappop(self._heap)
            out.append(path)
        return out

    def confirm(self, path: str, sig: AnySignature | None, now: float) -> _Pending | None:
        """The fresh stat of a due ``path``: its pending record (removed) when it settled, else None
        (it changed, or was seen again meanwhile, and waits once more)."""
        entry = self._pending.get(path)
        if entry is None:
            return None
        if sig != entry.sig:
            entry.sig = sig
            entry.changed_at = now
            self._arm(path, entry, now + self.settle)
            return None
        if entry.changed_at + self.settle > now:
            if entry.deadline <= now:
                self._arm(path, entry, entry.changed_at + self.settle)
            return None
        del self._pending[path]
        return entry


@dataclass(slots=True)
class Batcher:
    """Settled files gathered into one event per ``window`` seconds, from the first file's arrival."""

    window: float
    _items: dict[str, Settled] = field(default_factory=dict)
    deadline: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Settled, now: float) -> None:
        if self.deadline is None:
            self.deadline = now + self.window
        self._items[item.path] = item

    def take(self, now: float) -> list[Settled] | None:
        """The window's files, sorted by path, once its deadline passed; else None."""
        if self.deadline is None or now < self.deadline:
            return None
        items = sorted(self._items.values(), key=lambda item: item.path)
        self._items.clear()
        self.deadline = None
        return items
