"""The trigger manager: runs every trigger on its source, and keeps the sources in step with the
store as triggers are applied, paused, resumed and deleted — without a restart.

At start it loads all triggers, starts each kind of source once (on the scheduler's exit stack, so
sources stop before the dispatcher) with the daemon's sink (:class:`daemon.intake.events.Ingest`), and
``put``s every active trigger. A trigger its source cannot watch (``TriggerError``, or any failure of
the source) is logged and kept in its status; the others keep running.

Changes reach the sources through :meth:`Triggering.sync`: the API calls it after its commit (apply,
pause, resume, delete), and a reconcile loop calls it every ``RECONCILE_INTERVAL_S`` for whatever
changed behind this daemon's back (another daemon's API, a hand edit) — the store is the truth — and
to try again the triggers a source refused (a JetStream stream created since). :meth:`wake` runs the
reconcile at once: another daemon's API said (a NOTIFY, a hint) that it changed something.

Pause is ``remove`` (the source stops watching; an event already on its way is recorded ``skipped``);
resume is ``put`` with the state the source saved, so a source's own catch-up rules decide what it
does about the time it was paused. Delete is ``remove``; the trigger's events go with its row.

One daemon runs the triggers: with several daemons on one database, only the leader
(:mod:`daemon.runtime.leader`) starts a ``Triggering``, and stops it when it loses the lead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
import structlog
from nats.aio.client import Client as NATS

from daemon.intake.events import Ingest
from daemon.planning.contexts import Datastores
from daemon.runtime.tasks import Supervisor
from daemon.store import triggering as trigger_store
from daemon.store.runs import RunRecord
from triggers.base import Source, TriggerConfig, TriggerError
from triggers.run import CATCH_UP_BATCH, RunStatusSource
from triggers.specs import EventSource, FilesSource

log = structlog.get_logger(__name__)

RECONCILE_INTERVAL_S = 10.0
PUT_TIMEOUT_S = 30.0


@dataclass(slots=True)
class _Known:
    kind: str
    updated_at: datetime
    active: bool
    error: str | None = None
    on: EventSource | None = None  # what it watched, for the source to forget it when deleted


class Triggering:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        datastores: Datastores,
        sink: Ingest,
        sources: Mapping[str, Source],
        unavailable: Mapping[str, str],
    ) -> None:
        self._pool = pool
        self._datastores = datastores
        self.sink = sink
        self.sources = dict(sources)
        self.unavailable = dict(unavailable)
        self._known: dict[str, _Known] = {}
        self._lock = asyncio.Lock()
        self._supervisor = Supervisor()
        self._wake = asyncio.Event()
        self._datastores_changed = False

    @classmethod
    async def start(
        cls,
        stack: contextlib.AsyncExitStack,
        *,
        pool: asyncpg.Pool,
        nc: NATS,
        datastores: Datastores,
        sink: Ingest,
    ) -> Triggering:
        """Starts every source kind, committing events to ``sink``, and puts every active trigger;
        stops them all with ``stack``."""
        sources, unavailable = make_sources(pool, nc)
        manager = cls(pool=pool, datastores=datastores, sink=sink, sources=sources, unavailable=unavailable)
        stack.push_async_callback(manager.sink.aclose)  # after the sources stopped
        for source in sources.values():
            await source.start(stack, manager.sink, manager._save_state)
        await manager.sync()
        # Registered last, so it stops first: no reconcile runs while the sources go down.
        stack.push_async_callback(manager._supervisor.aclose)
        manager._supervisor.start("trigger-reconcile", manager._reconcile_loop)
        log.info(
            "triggers_started",
            triggers=len(manager._known),
            active=sum(known.active for known in manager._known.values()),
            sources=sorted(sources),
        )
        return manager

    async def _save_state(self, name: str, state: dict[str, Any]) -> None:
        await trigger_store.save_state(self._pool, name, state)

    async def sync(self, names: Iterable[str] | None = None, *, force: bool = False) -> None:
        """Brings the sources in step with the store for the triggers ``names`` (None: all of them):
        new or changed ones are put, paused ones and deleted ones removed. Unchanged ones are left
        alone unless ``force`` (after a datastore changed: a files trigger's root may have moved)."""
        async with self._lock:
            wanted = None if names is None else sorted(set(names))
            rows = await trigger_store.load_triggers(self._pool, wanted)
            found = {row.name for row in rows}
            gone = (set(self._known) if wanted is None else set(wanted) & set(self._known)) - found
            for name in sorted(gone):
                await self._remove(name, deleted=True)
                del self._known[name]
                log.info("trigger_removed", trigger=name, why="deleted")
            if any(row.source == "files" for row in rows):
                await self._datastores.refresh(self._pool)
            for row in rows:
                known = self._known.get(row.name)
                # A trigger its source refused is tried again: the stream or directory may exist now.
                unchanged = known is not None and known.updated_at == row.updated_at and known.error is None
                if unchanged and not force:
                    continue
                await self._apply(row, known)

    async def applied(self, items: Iterable[Any]) -> None:
        """After an apply committed (``daemon.apply.Applied`` items): changed triggers are synced;
        a changed datastore re-puts the files triggers, whose root may have moved."""
        names, datastores = applied_changes(items)
        if datastores:
            await self._refresh_files()
        if names:
            await self.sync(names)

    async def _refresh_files(self) -> None:
        await self._datastores.refresh(self._pool)
        files = [name for name, known in self._known.items() if known.kind == "files"]
        await self.sync(files, force=True)

    def wake(self, *, datastores: bool = False) -> None:
        """Reconcile now rather than at the next interval: triggers (and, with ``datastores``, the
        datastores files triggers watch) changed behind this daemon's back."""
        self._datastores_changed |= datastores
        self._wake.set()

    async def _apply(self, row: trigger_store.TriggerRow, known: _Known | None) -> None:
        if known is not None and known.active and (row.paused or known.kind != row.source):
            await self._remove(row.name)
        entry = _Known(kind=row.source, updated_at=row.updated_at, active=not row.paused)
        with contextlib.suppress(msgspec.ValidationError):  # a bad spec is reported by _config below
            entry.on = msgspec.convert(row.spec["on"], EventSource)
        self._known[row.name] = entry
        if row.paused:
            log.info("trigger_paused", trigger=row.name)
            return
        source = self.sources.get(row.source)
        if source is None:
            entry.error = self.unavailable.get(row.source, f"no {row.source} source in this daemon")
            log.error("trigger_not_watched", trigger=row.name, error=entry.error)
            return
        try:
            config = self._config(row)
            await asyncio.wait_for(source.put(config), PUT_TIMEOUT_S)
        except (TriggerError, msgspec.ValidationError) as exc:
            entry.error = str(exc)
            log.error("trigger_not_watched", trigger=row.name, error=entry.error)
        except TimeoutError:
            entry.error = f"the {row.source} source did not take the trigger within {PUT_TIMEOUT_S:g}s"
            log.error("trigger_not_watched", trigger=row.name, error=entry.error)
        except Exception as exc:  # a broken source must not take the other triggers down
            entry.error = f"{type(exc).__name__}: {exc}"
            log.exception("trigger_not_watched", trigger=row.name)
        else:
            log.info("trigger_watched", trigger=row.name, source=row.source)

    async def _remove(self, name: str, *, deleted: bool = False) -> None:
        known = self._known.get(name)
        source = None if known is None else self.sources.get(known.kind)
        if source is None:
            return
        try:
            if deleted and known.on is not None:
                await asyncio.wait_for(source.forget(name, known.on), PUT_TIMEOUT_S)
            else:
                await asyncio.wait_for(source.remove(name), PUT_TIMEOUT_S)
        except Exception:
            log.exception("trigger_remove_failed", trigger=name)

    def _config(self, row: trigger_store.TriggerRow) -> TriggerConfig:
        on = msgspec.convert(row.spec["on"], EventSource)
        root = location = None
        if isinstance(on, FilesSource):
            location = self._datastores.stores.get(on.datastore)
            root = self._datastores.paths.get(on.datastore)
            if location is None and not root:
                raise TriggerError(f"trigger {row.name}: datastore {on.datastore} has no local path")
        return TriggerConfig(name=row.name, on=on, root=root, location=location, state=row.state)

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECONCILE_INTERVAL_S):
                    await self._wake.wait()
            self._wake.clear()
            if self._datastores_changed:
                self._datastores_changed = False
                await self._refresh_files()
            await self.sync()

    def status(self, name: str) -> dict[str, Any]:
        """What the trigger's source says about it now, plus ``active`` and the manager's ``error``."""
        known = self._known.get(name)
        if known is None:
            return {}
        status: dict[str, Any] = {"active": known.active and known.error is None}
        source = self.sources.get(known.kind)
        if known.active and source is not None:
            with contextlib.suppress(Exception):
                status.update(source.status(name))
        if known.error is not None:
            status["error"] = known.error
        return status

    def jetstream_pending(self) -> dict[str, int]:
        """Messages each JetStream ``nats`` trigger has not been delivered yet, as last seen (no
        request: what its last message's metadata said)."""
        from triggers.nats import NatsSource

        source = self.sources.get("nats")
        return source.pending() if isinstance(source, NatsSource) else {}


def applied_changes(items: Iterable[Any]) -> tuple[list[str], bool]:
    """What an apply (``daemon.apply.Applied`` items) changed for the trigger sources: the triggers
    it created or changed, and whether it changed a datastore (files triggers' roots)."""
    changed = [item for item in items if item.action != "unchanged"]
    return [item.name for item in changed if item.kind == "Trigger"], any(
        item.kind == "Datastore" for item in changed
    )


def make_sources(pool: asyncpg.Pool, nc: NATS) -> tuple[dict[str, Source], dict[str, str]]:
    """One source per kind this build has, and why each missing kind is missing."""

    async def finished_since(
        trigger: str, pipeline: str, statuses: Sequence[str], after: datetime
    ) -> list[dict[str, Any]]:
        found: list[RunRecord] = await trigger_store.finished_runs(
            pool, trigger, pipeline, statuses, after, limit=CATCH_UP_BATCH
        )
        return [run.summary() for run in found]

    sources: dict[str, Source] = {"run": RunStatusSource(nc, finished_since)}
    unavailable: dict[str, str] = {}
    try:
        from triggers.cron import CronSource

        sources["cron"] = CronSource()
    except ImportError as exc:
        unavailable["cron"] = f"the cron source is not available: {exc}"
    try:
        from triggers.files import FilesSource as FilesWatcher

        sources["files"] = FilesWatcher(nc)
    except ImportError as exc:
        unavailable["files"] = f"the files source is not available: {exc}"
    try:
        from triggers.nats import NatsSource

        sources["nats"] = NatsSource(nc)
    except ImportError as exc:
        unavailable["nats"] = f"the nats source is not available: {exc}"
    return sources, unavailable
