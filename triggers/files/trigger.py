"""One files trigger at run time: its watcher, and one supervised task that runs its loops: settling
(wakes at the next deadline, re-stats due files off the loop, classifies them), delivery
(:mod:`triggers.files.delivery`), state saving (debounced), and maintenance (the first scan, health
checks that restart a dead watcher, rescans after an overflow or a restart, and a periodic
reconciling rescan: watcher events are hints, the tree is the truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat as stat_module
from typing import TYPE_CHECKING, Any

import structlog

from kit.backoff import Backoff
from kit.supervise import supervise
from triggers.base import TriggerConfig, TriggerError
from triggers.files.accounts import Accounts, dump_seen
from triggers.files.delivery import Delivery
from triggers.files.matching import Matcher
from triggers.files.settle import Batcher, Settled, Settler, Signature, classify, wanted
from triggers.files.watch import Bridge, Change, Watch, choose_mode, scan, signature
from triggers.specs import FilesSource as FilesSpec

if TYPE_CHECKING:
    from triggers.files.source import FilesSource

log = structlog.get_logger(__name__)

RESTART_BASE_S = 1.0
RESTART_CAP_S = 60.0


class WatchedTrigger:
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
        self.accounts = Accounts(seen)
        self.events = frozenset(spec.events)
        self.settler = Settler(spec.settle)
        self.batcher = Batcher(spec.batch) if spec.batch > 0 else None
        self.delivery = Delivery(
            config.name,
            spec.datastore,
            batched=self.batcher is not None,
            accounts=self.accounts,
            sink=source.sink,
            retry_base=source.retry_base,
            retry_cap=source.retry_cap,
        )
        self._wake = asyncio.Event()
        self._rescan_requested = asyncio.Event()
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
        if self.accounts.changes != self._saved:
            await asyncio.shield(self._save())

    @property
    def seen(self) -> dict[str, Signature]:
        return self.accounts.seen

    def status(self) -> dict[str, Any]:
        pending = len(self.settler) + (len(self.batcher) if self.batcher else 0) + self.delivery.delivering
        return {"watch": self.watch.mode if self.watch else None, "pending": pending, "error": self.error}

    def request_rescan(self) -> None:
        self._rescan_requested.set()

    async def _loops(self) -> None:
        """The trigger's loops; one that fails stops them all, and ``open``'s supervisor restarts them
        (after a full rescan) with capped backoff."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._settle_loop(), name=f"files:{self.name}:settle")
            for i, queue in enumerate(self.delivery.queues):
                tg.create_task(self.delivery.worker(queue), name=f"files:{self.name}:deliver{i}")
            tg.create_task(self._save_loop(), name=f"files:{self.name}:save")
            tg.create_task(self._maintain_loop(), name=f"files:{self.name}:maintain")

    def _crashed(self, exc: Exception) -> None:
        """Forget every transient record; the rescan that follows finds again what was not saved."""
        self.error = f"internal error, restarting: {exc!r}"
        self.settler = Settler(self.spec.settle)
        self.batcher = Batcher(self.spec.batch) if self.spec.batch > 0 else None
        self.delivery.drop()

    # -- sightings (on the loop) ----------------------------------------------------------------

    def _sighting(self, path: str, sig: Signature | None, now: float) -> None:
        if path not in self.settler and sig == self.accounts.known(path):
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
            src_known = src is not None and self.accounts.known(src) is not None
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
            for path in {*self.accounts.seen, *self.settler.paths()}:
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
                    self.accounts.known(path),
                    moved_from=moved_from,
                    moved_from_known=self.accounts.known(moved_from) if moved_from else None,
                )
                if settled is not None:
                    self._settled(settled, now)
        if self.batcher is not None and (items := self.batcher.take(self._loop.time())):
            self.delivery.enqueue(items)

    def _settled(self, settled: Settled, now: float) -> None:
        if not wanted(settled.kind, self.events):
            self.accounts.account([settled])  # not asked for, yet accounted for: it is no news later
        elif self.batcher is not None:
            self.batcher.add(settled, now)
        else:
            self.delivery.enqueue([settled])

    # -- state ----------------------------------------------------------------------------------

    async def _save(self) -> None:
        changes = self.accounts.changes
        try:
            await self._source.save_state(self.name, dump_seen(self.accounts.seen))
        except Exception as exc:
            log.warning("files_state_save_failed", trigger=self.name, error=str(exc))
            self.accounts.dirty.set()
            return
        self._saved = max(self._saved, changes)

    async def _save_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.accounts.dirty.wait(), 60.0)
            if not self.accounts.dirty.is_set():
                continue
            self.accounts.dirty.clear()
            await self._save()
            await asyncio.sleep(self._source.save_interval)

    # -- maintenance ----------------------------------------------------------------------------

    async def _rescan(self) -> None:
        found = await asyncio.to_thread(scan, self.matcher)
        now = self._loop.time()
        for path, sig in found.items():
            self._sighting(path, sig, now)
        for path in list(self.accounts.seen):
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
