"""The watchdog side: which watcher a root gets, and the bridge from watchdog's threads to the loop.

Watchdog calls handlers on its own dispatcher thread. The handler there does the blocking part (the
pattern match and a ``stat``) and hands a ``Change`` to the event loop with
``loop.call_soon_threadsafe``; it never touches asyncio objects itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog
from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from triggers.files.matching import Matcher, relative
from triggers.files.settle import Signature

log = structlog.get_logger(__name__)

WatchMode = Literal["inotify", "poll"]

# File systems where inotify does not see changes made by other machines (or by the host of a VM).
_REMOTE_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre", "gpfs"}
    | {"beegfs", "davfs", "virtiofs", "fuse", "sshfs"}
)


def _unescape_mount(field: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def fs_type(path: str, mountinfo: str) -> str | None:
    """The file system type of the mount holding ``path`` (absolute, resolved), from the text of
    ``/proc/self/mountinfo``; None when no mount matches."""
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mount = _unescape_mount(fields[4])
        prefix = mount.rstrip("/") + "/"
        if (path == mount or path.startswith(prefix) or mount == "/") and (
            best is None or len(mount) >= best[0]
        ):
            best = (len(mount), right.split()[0])
    return best[1] if best else None


def is_remote_fs(kind: str | None) -> bool:
    return kind is not None and (kind in _REMOTE_FS or kind.startswith("fuse."))


def choose_mode(requested: str, root: str) -> WatchMode:
    """``inotify`` or ``poll`` for ``requested`` (``auto`` looks at the file system of ``root``)."""
    if requested in ("inotify", "poll"):
        return requested  # type: ignore[return-value]
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            kind = fs_type(os.path.realpath(root), f.read())
    except OSError:
        kind = None
    return "poll" if is_remote_fs(kind) else "inotify"


def signature(path: str) -> Signature | None:
    """The signature of the regular file at ``path``; None when it is missing or not a regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return Signature(st.st_mtime_ns, st.st_size)


def scan(matcher: Matcher) -> dict[str, Signature]:
    """Every matching regular file below the matcher's root (blocking: run it in a thread)."""
    found: dict[str, Signature] = {}
    root = matcher.root
    if not os.path.isdir(root):
        raise FileNotFoundError(root)
    stack: list[tuple[str, str]] = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            rel = prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel + "/"))
                    continue
                if not matcher.matches(rel) or not entry.is_file():
                    continue
                st = entry.stat()
            except (FileNotFoundError, NotADirectoryError):
                continue
            found[rel] = Signature(st.st_mtime_ns, st.st_size)
    return found


@dataclass(frozen=True, slots=True)
class Change:
    """What a watcher saw, with the file's signature read on the watcher's thread.

    ``kind``: ``change`` (``path`` was created, written or deleted; ``sig`` None when it is gone),
    ``move`` (``src`` to ``path``; either may be None when outside the pattern), ``dir_gone`` (the
    directory ``path``, relative, and all below it may be gone)."""

    kind: Literal["change", "move", "dir_gone"]
    path: str | None
    sig: Signature | None = None
    src: str | None = None


_FILE_CHANGES = (FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileAttribEvent, FileDeletedEvent)


class Bridge(FileSystemEventHandler):
    """A watchdog handler for one trigger: matches paths and posts ``Change``s onto ``loop``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, matcher: Matcher, deliver: Callable[[Change], None]
    ) -> None:
        self._loop = loop
        self._matcher = matcher
        self._deliver = deliver
        self.closed = False

    def _post(self, change: Change) -> None:
        if self.closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody is listening
            self._loop.call_soon_threadsafe(self._deliver, change)

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._handle(event)
        except Exception:  # a handler that raises would kill watchdog's dispatcher thread
            log.exception("files_bridge_failed", root=self._matcher.root, event=type(event).__name__)

    def _handle(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        if isinstance(event, FileMovedEvent):
            dest = os.fsdecode(event.dest_path)
            src_rel = self._matcher.match_abs(src) if src else None
            dest_rel = self._matcher.match_abs(dest) if dest else None
            if src_rel is None and dest_rel is None:
                return
            sig = signature(dest) if dest_rel is not None else None
            self._post(Change("move", dest_rel, sig, src_rel))
        elif isinstance(event, _FILE_CHANGES):
            rel = self._matcher.match_abs(src)
            if rel is None:
                return
            sig = None if isinstance(event, FileDeletedEvent) else signature(src)
            self._post(Change("change", rel, sig))
        elif isinstance(event, DirDeletedEvent | DirMovedEvent):
            # The root itself going away (a mount lost) is no deletion of its files: the health check
            # reports it, and the rescan after the watch is back reconciles.
            rel = relative(self._matcher.root, src)
            if rel is not None:
                self._post(Change("dir_gone", rel))


class Watch:
    """One trigger's place on a watchdog observer: started, checked for life, restarted, stopped.

    Inotify watches share one observer (one inotify instance for the whole source: the kernel allows
    few per user); polling watches each get their own observer, so that one that dies can be
    restarted alone."""

    def __init__(self, mode: WatchMode, root: str, handler: Bridge, hub: InotifyHub, poll_interval: float):
        self.mode = mode
        self.root = root
        self._handler = handler
        self._hub = hub
        self._poll_interval = poll_interval
        self._observer: BaseObserver | None = None
        self._watch: ObservedWatch | None = None

    def start(self) -> None:
        """Blocking (the first snapshot of a polling watch reads the tree): run it in a thread.
        Raises ``OSError`` when the root cannot be watched."""
        if self.mode == "inotify":
            self._observer, self._watch = self._hub.add(self.root, self._handler)
            return
        observer = PollingObserver(timeout=self._poll_interval)
        observer.schedule(self._handler, self.root, recursive=True)
        observer.start()
        self._observer = observer

    def alive(self) -> bool:
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        try:
            emitters = list(observer.emitters)
        except RuntimeError:  # changed size while copied (another trigger scheduling): ask again later
            return True
        if self.mode == "inotify":
            emitters = [e for e in emitters if e.watch == self._watch]
        return bool(emitters) and all(e.is_alive() for e in emitters)

    def stop(self) -> None:
        """Blocking (joins a polling observer's threads, bounded): run it in a thread."""
        observer, self._observer = self._observer, None
        if observer is None:
            return
        if self.mode == "inotify":
            if self._watch is not None:
                self._hub.remove(self._watch, self._handler)
            self._watch = None
            return
        observer.stop()
        observer.join(timeout=max(5.0, self._poll_interval + 1.0))


class InotifyHub:
    """The source's one inotify observer, shared by all inotify watches (handlers per root)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._observer: BaseObserver | None = None
        self._handlers: dict[ObservedWatch, set[Bridge]] = {}

    def _ensure(self) -> BaseObserver:
        if self._observer is None:
            from watchdog.observers.inotify import InotifyObserver

            observer = InotifyObserver()
            observer.start()
            self._observer = observer
        return self._observer

    def add(self, root: str, handler: Bridge) -> tuple[BaseObserver, ObservedWatch]:
        with self._lock:
            observer = self._ensure()
            watch = ObservedWatch(root, recursive=True)
            emitter_dead = any(e.watch == watch and not e.is_alive() for e in observer.emitters)
            if emitter_dead:  # the root went away once: start its emitter afresh
                with contextlib.suppress(KeyError):
                    observer.unschedule(watch)
                survivors = self._handlers.pop(watch, set())
            else:
                survivors = set()
            watch = observer.schedule(handler, root, recursive=True)
            for other in survivors - {handler}:
                observer.add_handler_for_watch(other, watch)
            self._handlers.setdefault(watch, set()).update(survivors | {handler})
            return observer, watch

    def remove(self, watch: ObservedWatch, handler: Bridge) -> None:
        with self._lock:
            observer = self._observer
            handlers = self._handlers.get(watch)
            if observer is None or handlers is None:
                return
            handlers.discard(handler)
            with contextlib.suppress(KeyError):
                if handlers:
                    observer.remove_handler_for_watch(handler, watch)
                else:
                    del self._handlers[watch]
                    observer.unschedule(watch)

    def close(self) -> None:
        with self._lock:
            observer, self._observer = self._observer, None
            self._handlers.clear()
        if observer is not None:
            observer.stop()
            observer.join(timeout=5.0)


class OverflowHook(logging.Handler):
    """Watchdog drops the kernel's 'inotify queue overflowed' signal after logging it (it rebuilds
    its watches, but the events are lost): this handler on its logger turns that record into a call
    of ``on_overflow`` (on watchdog's thread; it must be thread-safe)."""

    LOGGER = "watchdog.observers.inotify_c"

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(level=logging.WARNING)
        self._on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            if "overflow" in str(record.msg).lower():
                self._on_overflow()

    def install(self) -> None:
        logger = logging.getLogger(self.LOGGER)
        if logger.getEffectiveLevel() > logging.WARNING:
            logger.setLevel(logging.WARNING)
        logger.addHandler(self)

    def uninstall(self) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)
