"""One files trigger on a directory at run time: its watcher, and the loops of
:class:`~triggers.files.settling.SettlingTrigger` (settling re-stats due files off the loop) plus
maintenance (the first scan, health checks that restart a dead watcher, rescans after an overflow or
a restart, and a periodic reconciling rescan: watcher events are hints, the tree is the truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat as stat_module
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import structlog

from kit.backoff import Backoff
from triggers.base import TriggerConfig, TriggerError
from triggers.files.accounts import dump_seen
from triggers.files.matching import Matcher
from triggers.files.settle import AnySignature, Signature
from triggers.files.settling import SettlingTrigger
from triggers.files.watch import Bridge, Change, Watch, choose_mode, scan, signature
from triggers.specs import FilesSource as FilesSpec

if TYPE_CHECKING:
    from triggers.files.source import FilesSource

log = structlog.get_logger(__name__)


class WatchedTrigger(SettlingTrigger):
    """One files trigger on a directory at run time."""

    def __init__(
        self,
        source: FilesSource,
        config: TriggerConfig,
        spec: FilesSpec,
        root: str,
        seen: dict[str, Signature],
    ) -> None:
        super().__init__(source, config, spec, dict(seen))
        self.root = root
        self.matcher = Matcher(root, spec.pattern)
        self._rescan_requested = asyncio.Event()
        self.bridge = Bridge(self._loop, self.matcher, self.on_change)
        self.watch: Watch | None = None

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
        self._start_loops()

    async def close(self) -> None:
        """Stop watching; after this no sink call of this trigger is in flight and what was
        accounted for is saved."""
        self.closed = True
        self.bridge.closed = True
        if self.watch is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.watch.stop)
        await self._stop_loops()

    def same_target(self, config: TriggerConfig) -> bool:
        """Whether ``config`` watches what this trigger watches (then it keeps what it accounted for)."""
        return config.location is None and self.root == config.root  # both made absolute by the source

    def status(self) -> dict[str, Any]:
        mode = self.watch.mode if self.watch else None
        return {"watch": mode, "pending": self.pending, "error": self.error}

    def request_rescan(self) -> None:
        self._rescan_requested.set()

    def _finders(self) -> list[Coroutine[Any, Any, None]]:
        return [self._maintain_loop()]

    def _dump_state(self) -> dict[str, Any]:
        return dump_seen(self.accounts.seen)

    # -- sightings (on the loop) ----------------------------------------------------------------

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

    async def _signatures(self, paths: list[str]) -> list[AnySignature | None]:
        return await asyncio.to_thread(self._stat_many, paths)

    # -- maintenance ----------------------------------------------------------------------------

    async def _rescan(self) -> None:
        found = await asyncio.to_thread(scan, self.matcher)
        self._found_all(found)
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
