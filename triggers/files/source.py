"""The ``files`` source: settled files in a datastore become events, each once.

Per trigger, one supervised task runs four loops: settling (wakes at the next deadline, re-stats
due files off the loop, classifies them), delivery workers (files are sharded by path so that one
path's events stay in order; a failing sink is retried with capped backoff), state saving
(debounced), and maintenance (the first scan, health checks that restart a dead watcher, rescans
after an overflow or a restart, and a periodic reconciling rescan: watcher events are hints, the
tree is the truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat as stat_module
import zlib
from collections.abc import Mapping
from typing import Any

import structlog

from kit.backoff import Backoff
from kit.offer import offer_until_committed
from kit.supervise import supervise
from triggers.base import EventSink, SaveState, Source, TriggerConfig, TriggerError, TriggerEvent
from triggers.files.matching import Matcher
from triggers.files.settle import Batcher, Settled, Settler, Signature, batch_key, classify, wanted
from triggers.files.watch import Bridge, Change, InotifyHub, OverflowHook, Watch, choose_mode, scan, signature
from triggers.specs import FilesSource as FilesSpec

log = structlog.get_logger(__name__)

_WORKERS = 8
RESTART_BASE_S = 1.0
RESTART_CAP_S = 60.0


def _resolve_root(root: str) -> tuple[str, bool]:
    path = os.path.abspath(root)
    return path, os.path.isdir(path)


def load_seen(state: Mapping[str, Any], matcher: Matcher) -> dict[str, Signature]:
    """The ``seen`` record of a saved state, without paths the (maybe changed) pattern no longer selects."""
    seen: dict[str, Signature] = {}
    raw = state.get("seen")
    if not isinstance(raw, dict):
        return seen
    for path, value in raw.items():
        ok = isinstance(value, list | tuple) and len(value) == 2
        if ok and isinstance(path, str) and matcher.matches(path):
            with contextlib.suppress(TypeError, ValueError):
                seen[path] = Signature(int(value[0]), int(value[1]))
    return seen


def dump_seen(seen: Mapping[str, Signature]) -> dict[str, Any]:
    return {"seen": {path: [sig.mtime_ns, sig.size] for path, sig in seen.items()}}


class _Watched:
    """One files trigger at run time."""

    def __init__(
        self,
        source: FilesSource,
        config: TriggerConfig,
        spec: FilesSpec,
        root: str,
        seen: dict[str, Signature],
    ) -> None:
        self.name = config.name
        self.config = config
        self.spec = spec
        self.root = root
        self._source = source
        self._loop = asyncio.get_running_loop()
        self.matcher = Matcher(root, spec.pattern)
        self.seen = seen
        self.events = frozenset(spec.events)
        self.settler = Settler(spec.settle)
        self.batcher = Batcher(spec.batch) if spec.batch > 0 else None
        self._queues: list[asyncio.Queue[list[Settled]]] = [
            asyncio.Queue() for _ in range(1 if self.batcher else _WORKERS)
        ]
        self._inflight: dict[str, tuple[int, Signature | None]] = {}
        self._delivering = 0
        self._wake = asyncio.Event()
        self._rescan_requested = asyncio.Event()
        self._dirty = asyncio.Event()
        self._changes = 0
        self._saved = 0
        self.error: str | None = None
        self.closed = False
        self.bridge = Bridge(self._loop, self.matcher, self.on_change)
        self.watch: Watch | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the watcher (inotify or polling as asked; ``auto`` falls back to polling when inotify
        cannot watch the root) and the trigger's task. Raises ``TriggerError``."""
        mode = choose_mode(self.spec.watch, self.root)
        watch = Watch(mode, self.root, self.bridge, self._source.hub, self.spec.poll_interval)
        try:
            await asyncio.to_thread(watch.start)
        except OSError as exc:
            if self.spec.watch != "auto" or mode == "poll":
                raise TriggerError(f"trigger {self.name}: cannot watch {self.root} ({mode}): {exc}") from exc
            log.warning("files_watch_fallback", trigger=self.name, root=self.root, error=str(exc))
            watch = Watch("poll", self.root, self.bridge, self._source.hub, self.spec.poll_interval)
            try:
                await asyncio.to_thread(watch.start)
            except OSError as exc2:
                raise TriggerError(f"trigger {self.name}: cannot watch {self.root}: {exc2}") from exc2
        self.watch = watch
        log.info("files_trigger_watching", trigger=self.name, root=self.root, watch=watch.mode)
        loops = supervise(
            self._loops,
            name=f"files:{self.name}:loops",
            crashed="files_trigger_crashed",
            delays=Backoff(RESTART_BASE_S, RESTART_CAP_S),
            fresh_after_s=RESTART_CAP_S,
            context=lambda: {"trigger": self.name},
            on_crash=self._crashed,
        )
        self._task = asyncio.create_task(loops, name=f"files:{self.name}")

    async def close(self) -> None:
        """Stop watching; after this no sink call of this trigger is in flight and what was
        accounted for is saved."""
        self.closed = True
        self.bridge.closed = True
        if self.watch is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.watch.stop)
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=10.0)
            if not done:
                log.warning("files_trigger_stop_slow", trigger=self.name)
        if self._changes != self._saved:
            await asyncio.shield(self._save())

    def status(self) -> dict[str, Any]:
        pending = len(self.settler) + (len(self.batcher) if self.batcher else 0) + self._delivering
        return {"watch": self.watch.mode if self.watch else None, "pending": pending, "error": self.error}

    def request_rescan(self) -> None:
        self._rescan_requested.set()

    async def _loops(self) -> None:
        """The trigger's loops; one that fails stops them all, and ``open``'s supervisor restarts them
        (after a full rescan) with capped backoff."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._settle_loop(), name=f"files:{self.name}:settle")
            for i, queue in enumerate(self._queues):
                tg.create_task(self._worker(queue), name=f"files:{self.name}:deliver{i}")
            tg.create_task(self._save_loop(), name=f"files:{self.name}:save")
            tg.create_task(self._maintain_loop(), name=f"files:{self.name}:maintain")

    def _crashed(self, exc: Exception) -> None:
        """Forget every transient record; the rescan that follows finds again what was not saved."""
        self.error = f"internal error, restarting: {exc!r}"
        self.settler = Settler(self.spec.settle)
        self.batcher = Batcher(self.spec.batch) if self.spec.batch > 0 else None
        for queue in self._queues:
            while not queue.empty():
                queue.get_nowait()
        self._inflight.clear()
        self._delivering = 0

    # -- sightings (on the loop) ----------------------------------------------------------------

    def _known(self, path: str) -> Signature | None:
        """What this trigger last accounted for (or is delivering) of ``path``."""
        if (inflight := self._inflight.get(path)) is not None:
            return inflight[1]
        return self.seen.get(path)

    def _sighting(self, path: str, sig: Signature | None, now: float) -> None:
        if path not in self.settler and sig == self._known(path):
            return  # nothing new: a repeated event, a read, a rescan of an unchanged file
        self.settler.observe(path, sig, now)

    def on_change(self, change: Change) -> None:
        """A watcher's change, posted to the loop by the bridge."""
        if self.closed:
            return
        now = self._loop.time()
        if change.kind == "change" and change.path is not None:
            self._sighting(change.path, change.sig, now)
        elif change.kind == "move":
            src, dest = change.src, change.path
            src_known = src is not None and self._known(src) is not None
            if src is not None and dest is not None and src_known and "moved" in self.events:
                self.settler.forget(src)
                self.settler.observe(dest, change.sig, now, moved_from=src)
            else:  # a move into the tree, or from a name the pattern does not select: a creation
                if src is not None:
                    self._sighting(src, None, now)
                if dest is not None:
                    self._sighting(dest, change.sig, now)
        elif change.kind == "dir_gone" and change.path is not None:
            prefix = change.path + "/"
            for path in {*self.seen, *self.settler.paths()}:
                if path.startswith(prefix):
                    self._sighting(path, None, now)
        self._wake.set()

    # -- settling -------------------------------------------------------------------------------

    def _stat_many(self, paths: list[str]) -> list[Signature | None]:
        return [signature(os.path.join(self.root, path)) for path in paths]

    async def _settle_loop(self) -> None:
        while True:
            self._wake.clear()
            now = self._loop.time()
            batch_deadline = self.batcher.deadline if self.batcher is not None else None
            deadlines = [d for d in (self.settler.next_deadline(), batch_deadline) if d is not None]
            deadline = min(deadlines, default=None)
            if deadline is None or deadline > now:
                timeout = 60.0 if deadline is None else min(deadline - now, 60.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            await self._settle_due()

    async def _settle_due(self) -> None:
        due = self.settler.due(self._loop.time())
        if due:
            sigs = await asyncio.to_thread(self._stat_many, due)
            now = self._loop.time()
            for path, sig in zip(due, sigs, strict=True):
                entry = self.settler.confirm(path, sig, now)
                if entry is None:
                    continue
                moved_from = entry.moved_from
                settled = classify(
                    path,
                    sig,
                    self._known(path),
                    moved_from=moved_from,
                    moved_from_known=self._known(moved_from) if moved_from else None,
                )
                if settled is not None:
                    self._settled(settled, now)
        if self.batcher is not None and (items := self.batcher.take(self._loop.time())):
            self._enqueue(items)

    def _settled(self, settled: Settled, now: float) -> None:
        if not wanted(settled.kind, self.events):
            self._account([settled])  # not asked for, yet accounted for: it is no news later
        elif self.batcher is not None:
            self.batcher.add(settled, now)
        else:
            self._enqueue([settled])

    # -- delivery -------------------------------------------------------------------------------

    def _enqueue(self, items: list[Settled]) -> None:
        for item in items:
            count = self._inflight.get(item.path, (0, None))[0]
            self._inflight[item.path] = (count + 1, item.sig)
        self._delivering += len(items)
        shard = zlib.crc32(items[0].path.encode()) % len(self._queues)
        self._queues[shard].put_nowait(items)

    def _event(self, items: list[Settled]) -> TriggerEvent:
        datastore = self.spec.datastore
        if self.batcher is None:
            item = items[0]
            fields: dict[str, Any] = {"datastore": datastore, "path": item.path, "paths": [item.path]}
            fields["kind"] = item.kind
            if item.moved_from is not None:
                fields["moved_from"] = item.moved_from
            return TriggerEvent(trigger=self.name, dedupe_key=item.dedupe_key, fields=fields)
        paths = [item.path for item in items]
        kinds = {item.kind for item in items}
        fields = {
            "datastore": datastore,
            "path": paths[0],
            "paths": paths,
            "kind": kinds.pop() if len(kinds) == 1 else "mixed",
            "kinds": {item.path: item.kind for item in items},
        }
        return TriggerEvent(trigger=self.name, dedupe_key=batch_key(items), fields=fields)

    async def _worker(self, queue: asyncio.Queue[list[Settled]]) -> None:
        sink = self._source.sink
        while True:
            items = await queue.get()
            event = self._event(items)
            result = await offer_until_committed(
                lambda event=event: sink(event),
                failed="files_sink_failed",
                base=self._source.retry_base,
                cap=self._source.retry_cap,
                trigger=self.name,
                path=items[0].path,
            )
            assert result is not None  # never closed: cancelled with the trigger instead
            log.debug(
                "files_event_committed",
                trigger=self.name,
                path=items[0].path,
                files=len(items),
                outcome=result.outcome,
                run_id=result.run_id,
            )
            self._delivering -= len(items)
            self._account(items, delivered=True)

    def _account(self, items: list[Settled], *, delivered: bool = False) -> None:
        """Record ``items`` as seen (deleted ones leave the record) and schedule a save."""
        for item in items:
            if delivered:
                count, latest = self._inflight[item.path]
                if count > 1:
                    self._inflight[item.path] = (count - 1, latest)
                else:
                    del self._inflight[item.path]
            if item.sig is None:
                self.seen.pop(item.path, None)
            else:
                self.seen[item.path] = item.sig
            if item.moved_from is not None:
                self.seen.pop(item.moved_from, None)
        self._changes += 1
        self._dirty.set()

    # -- state ----------------------------------------------------------------------------------

    async def _save(self) -> None:
        changes = self._changes
        try:
            await self._source.save_state(self.name, dump_seen(self.seen))
        except Exception as exc:
            log.warning("files_state_save_failed", trigger=self.name, error=str(exc))
            self._dirty.set()
            return
        self._saved = max(self._saved, changes)

    async def _save_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), 60.0)
            if not self._dirty.is_set():
                continue
            self._dirty.clear()
            await self._save()
            await asyncio.sleep(self._source.save_interval)

    # -- maintenance ----------------------------------------------------------------------------

    async def _rescan(self) -> None:
        found = await asyncio.to_thread(scan, self.matcher)
        now = self._loop.time()
        for path, sig in found.items():
            self._sighting(path, sig, now)
        for path in list(self.seen):
            if path not in found:
                self._sighting(path, None, now)
        self._wake.set()
        log.info("files_rescanned", trigger=self.name, files=len(found), pending=len(self.settler))

    def _root_problem(self) -> str | None:
        """Why the root cannot be watched now (blocking: a lost mount can hang a stat)."""
        try:
            st = os.stat(self.root)
        except OSError as exc:
            return f"datastore directory {self.root} is unreachable: {exc.strerror or exc}"
        if not stat_module.S_ISDIR(st.st_mode):
            return f"datastore path {self.root} is not a directory"
        return None

    async def _check(self) -> str | None:
        try:
            problem = await asyncio.wait_for(asyncio.to_thread(self._root_problem), 10.0)
        except TimeoutError:
            problem = f"datastore directory {self.root} does not answer (stat took over 10 s)"
        if problem is None and self.watch is not None and not self.watch.alive():
            problem = f"the {self.watch.mode} watcher of {self.root} stopped"
        return problem

    async def _maintain_loop(self) -> None:
        source = self._source
        delays = Backoff(source.restart_base, source.restart_cap)
        healthy = True
        try:
            await self._rescan()
        except OSError as exc:
            healthy = False
            self.error = f"cannot scan {self.root}: {exc}"
        next_rescan = self._loop.time() + source.rescan_interval
        while True:
            if healthy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._rescan_requested.wait(), source.health_interval)
            else:
                await asyncio.sleep(delays.next())
            problem = await self._check()
            if problem is not None or not healthy:
                if problem is not None and healthy and problem != self.error:
                    log.warning("files_watch_failed", trigger=self.name, error=problem)
                self.error = problem or self.error
                if not await self._restart_watch():
                    healthy = False
                    continue
                healthy = True
                delays.reset()
                self._rescan_requested.set()
            if self._rescan_requested.is_set() or self._loop.time() >= next_rescan:
                self._rescan_requested.clear()
                try:
                    await self._rescan()
                except OSError as exc:
                    healthy = False
                    self.error = f"cannot scan {self.root}: {exc}"
                    continue
                self.error = None
                next_rescan = self._loop.time() + source.rescan_interval

    async def _restart_watch(self) -> bool:
        watch = self.watch
        if watch is None or self.closed:
            return False
        with contextlib.suppress(Exception):
            await asyncio.to_thread(watch.stop)
        if await self._check_root_only() is not None:
            return False
        try:
            await asyncio.to_thread(watch.start)
        except OSError as exc:
            self.error = f"cannot restart the {watch.mode} watcher of {self.root}: {exc}"
            log.warning("files_watch_restart_failed", trigger=self.name, error=str(exc))
            return False
        log.info("files_watch_restarted", trigger=self.name, watch=watch.mode)
        return True

    async def _check_root_only(self) -> str | None:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._root_problem), 10.0)
        except TimeoutError:
            return f"datastore directory {self.root} does not answer"


class FilesSource(Source):
    """Files settled in datastore directories, watched with watchdog (inotify, or polling on network
    mounts). The knobs are for tests and benchmarks; the defaults suit a daemon."""

    kind = "files"

    def __init__(
        self,
        *,
        rescan_interval: float = 600.0,
        health_interval: float = 2.0,
        save_interval: float = 0.5,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
        restart_base: float = 1.0,
        restart_cap: float = 60.0,
    ) -> None:
        self.rescan_interval = rescan_interval
        self.health_interval = health_interval
        self.save_interval = save_interval
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.restart_base = restart_base
        self.restart_cap = restart_cap
        self._triggers: dict[str, _Watched] = {}
        self._lock = asyncio.Lock()
        self.hub = InotifyHub()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, stack: contextlib.AsyncExitStack, sink: EventSink, save_state: SaveState) -> None:
        self._loop = asyncio.get_running_loop()
        self.sink = sink
        self.save_state = save_state
        hook = OverflowHook(self._overflowed)
        hook.install()
        stack.callback(hook.uninstall)
        stack.push_async_callback(self._close)

    def _overflowed(self) -> None:
        """On watchdog's thread: the kernel dropped inotify events; every inotify trigger rescans."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._rescan_inotify)

    def _rescan_inotify(self) -> None:
        log.warning("files_inotify_overflow", triggers=len(self._triggers))
        for watched in self._triggers.values():
            if watched.watch is not None and watched.watch.mode == "inotify":
                watched.request_rescan()

    async def _close(self) -> None:
        async with self._lock:
            triggers, self._triggers = list(self._triggers.values()), {}
            for watched in triggers:
                await watched.close()
            await asyncio.to_thread(self.hub.close)

    async def put(self, trigger: TriggerConfig) -> None:
        spec = trigger.on
        if not isinstance(spec, FilesSpec):
            raise TriggerError(f"trigger {trigger.name}: not a files trigger")
        if not trigger.root:
            raise TriggerError(f"trigger {trigger.name}: datastore {spec.datastore} has no local directory")
        root, is_dir = await asyncio.to_thread(_resolve_root, trigger.root)
        if not is_dir:
            raise TriggerError(
                f"trigger {trigger.name}: directory {root} of datastore {spec.datastore} does not exist"
            )
        async with self._lock:
            existing = self._triggers.get(trigger.name)
            if existing is not None and existing.spec == spec and existing.root == root:
                return
            matcher = Matcher(root, spec.pattern)
            if existing is not None:
                del self._triggers[trigger.name]
                await existing.close()
                seen = {path: sig for path, sig in existing.seen.items() if matcher.matches(path)}
                if existing.root != root:
                    seen = load_seen(trigger.state, matcher)
            else:
                seen = load_seen(trigger.state, matcher)
            watched = _Watched(self, trigger, spec, root, seen)
            await watched.open()
            self._triggers[trigger.name] = watched

    async def remove(self, name: str) -> None:
        async with self._lock:
            watched = self._triggers.pop(name, None)
            if watched is not None:
                await watched.close()
                log.info("files_trigger_removed", trigger=name)

    def status(self, name: str) -> Mapping[str, Any]:
        watched = self._triggers.get(name)
        return watched.status() if watched is not None else {}
