"""The ``files`` source: settled files in a datastore become events, each once.

The source holds one trigger per Trigger document: a :class:`~triggers.files.trigger.WatchedTrigger`
for a directory, a :class:`~triggers.files.bucket.BucketTrigger` for a bucket, and the inotify hub
directories share; on an inotify overflow every inotify trigger rescans. A changed trigger keeps what
it had accounted for, unless its directory or bucket changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS

from kit.objectstore import StoreError, open_store
from triggers.base import EventSink, SaveState, Source, TriggerConfig, TriggerError
from triggers.files.accounts import load_objects, load_seen
from triggers.files.bucket import BucketTrigger
from triggers.files.matching import Matcher
from triggers.files.settle import AnySignature
from triggers.files.trigger import WatchedTrigger
from triggers.files.watch import InotifyHub, OverflowHook
from triggers.specs import FilesSource as FilesSpec

log = structlog.get_logger(__name__)


def _resolve_root(root: str) -> tuple[str, bool]:
    path = os.path.abspath(root)
    return path, os.path.isdir(path)


Watched = WatchedTrigger | BucketTrigger


class FilesSource(Source):
    """Files settled in datastore directories, watched with watchdog (inotify, or polling on network
    mounts), and objects settled in buckets (listed, and notified on ``nc``). The knobs are for tests
    and benchmarks; the defaults suit a daemon."""

    kind = "files"

    def __init__(
        self,
        nc: NATS | None = None,
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
        self.nc = nc
        self._triggers: dict[str, Watched] = {}
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
            if isinstance(watched, WatchedTrigger) and watched.watch and watched.watch.mode == "inotify":
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
        if trigger.location is None:
            if spec.notifications is not None:
                raise TriggerError(
                    f"trigger {trigger.name}: notifications are for buckets, and datastore "
                    f"{spec.datastore} is a directory"
                )
            trigger = await self._resolved(trigger, spec)
        async with self._lock:
            existing = self._triggers.get(trigger.name)
            same_target = existing is not None and existing.same_target(trigger)
            if same_target and existing.spec == spec:
                return
            matcher = Matcher(trigger.root or "", spec.pattern)
            if existing is not None:
                del self._triggers[trigger.name]
                await existing.close()
            if same_target:
                seen = {path: sig for path, sig in existing.seen.items() if matcher.matches(path)}
            elif trigger.location is not None:
                seen = load_objects(trigger.state, matcher)
            else:
                seen = load_seen(trigger.state, matcher)
            watched = self._watched(trigger, spec, seen)
            await watched.open()
            self._triggers[trigger.name] = watched

    async def _resolved(self, trigger: TriggerConfig, spec: FilesSpec) -> TriggerConfig:
        """``trigger`` with its directory made absolute. Raises ``TriggerError`` when there is none."""
        if not trigger.root:
            raise TriggerError(f"trigger {trigger.name}: datastore {spec.datastore} has no local directory")
        root, is_dir = await asyncio.to_thread(_resolve_root, trigger.root)
        if not is_dir:
            raise TriggerError(
                f"trigger {trigger.name}: directory {root} of datastore {spec.datastore} does not exist"
            )
        return msgspec.structs.replace(trigger, root=root)

    def _watched(self, trigger: TriggerConfig, spec: FilesSpec, seen: dict[str, AnySignature]) -> Watched:
        if trigger.location is None:
            assert trigger.root is not None
            return WatchedTrigger(self, trigger, spec, trigger.root, seen)
        try:
            store = open_store(trigger.location)
        except StoreError as exc:
            raise TriggerError(f"trigger {trigger.name}: {exc}") from None
        return BucketTrigger(self, trigger, spec, trigger.location, store, seen)

    async def remove(self, name: str) -> None:
        async with self._lock:
            watched = self._triggers.pop(name, None)
            if watched is not None:
                await watched.close()
                log.info("files_trigger_removed", trigger=name)

    def status(self, name: str) -> Mapping[str, Any]:
        watched = self._triggers.get(name)
        return watched.status() if watched is not None else {}
