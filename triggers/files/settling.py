"""What every files trigger does at run time, whatever it watches (a directory, or a bucket): sightings
settle (the loop wakes at the next deadline, asks for fresh signatures of the due paths, classifies
them), settled items are delivered (:mod:`triggers.files.delivery`), and what was accounted for is
saved (debounced). Subclasses say how signatures are read (``_signatures``), what the saved state
looks like (``_dump_state``), and add the loops that find changes (``_finders``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from kit.backoff import Backoff
from kit.supervise import supervise
from triggers.base import TriggerConfig
from triggers.files.accounts import Accounts
from triggers.files.delivery import Delivery
from triggers.files.settle import AnySignature, Batcher, Settled, Settler, classify, wanted
from triggers.specs import FilesSource as FilesSpec

if TYPE_CHECKING:
    from triggers.files.source import FilesSource

log = structlog.get_logger(__name__)

UNREAD = "unread"
"""What ``_signatures`` gives for a path it could not read now (a store that did not answer)."""
RESTART_BASE_S = 1.0
RESTART_CAP_S = 60.0


class SettlingTrigger(abc.ABC):
    """One files trigger at run time: settling, delivery and saving; subclasses find the changes."""

    def __init__(
        self, source: FilesSource, config: TriggerConfig, spec: FilesSpec, seen: dict[str, AnySignature]
    ) -> None:
        self.name = config.name
        self.config = config
        self.spec = spec
        self._source = source
        self._loop = asyncio.get_running_loop()
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
        self._saved = 0
        self.error: str | None = None
        self.closed = False
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def _signatures(self, paths: list[str]) -> list[AnySignature | str | None]:
        """The signatures of ``paths`` now (None: gone; ``UNREAD``: unknown for now, ask later)."""

    @abc.abstractmethod
    def _dump_state(self) -> dict[str, Any]:
        """The state to save: what ``accounts.seen`` holds, in the form the source loads back."""

    @abc.abstractmethod
    def _finders(self) -> list[Coroutine[Any, Any, None]]:
        """The loops that find changes and report them with ``_sighting``."""

    # -- lifecycle ------------------------------------------------------------------------------

    def _start_loops(self) -> None:
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

    async def _stop_loops(self) -> None:
        """After this no sink call of this trigger is in flight and what was accounted for is saved."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=10.0)
            if not done:
                log.warning("files_trigger_stop_slow", trigger=self.name)
        if self.accounts.changes != self._saved:
            await asyncio.shield(self._save())

    @property
    def seen(self) -> dict[str, AnySignature]:
        return self.accounts.seen

    @property
    def pending(self) -> int:
        """Items settling, batching or being delivered."""
        return len(self.settler) + (len(self.batcher) if self.batcher else 0) + self.delivery.delivering

    async def _loops(self) -> None:
        """The trigger's loops; one that fails stops them all, and the supervisor restarts them
        (the finders start with a full look again) with capped backoff."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._settle_loop(), name=f"files:{self.name}:settle")
            for i, queue in enumerate(self.delivery.queues):
                tg.create_task(self.delivery.worker(queue), name=f"files:{self.name}:deliver{i}")
            tg.create_task(self._save_loop(), name=f"files:{self.name}:save")
            for i, finder in enumerate(self._finders()):
                tg.create_task(finder, name=f"files:{self.name}:find{i}")

    def _crashed(self, exc: Exception) -> None:
        """Forget every transient record; the full look that follows finds again what was not saved."""
        self.error = f"internal error, restarting: {exc!r}"
        self.settler = Settler(self.spec.settle)
        self.batcher = Batcher(self.spec.batch) if self.spec.batch > 0 else None
        self.delivery.drop()

    # -- sightings (on the loop) ----------------------------------------------------------------

    def _sighting(self, path: str, sig: AnySignature | None, now: float) -> None:
        if path not in self.settler and sig == self.accounts.known(path):
            return  # nothing new: a repeated event, a read, a rescan of an unchanged file
        self.settler.observe(path, sig, now)

    def _found_all(self, found: Mapping[str, AnySignature]) -> None:
        """A full look found exactly ``found``: each is sighted, and each path accounted for that it
        lacks is sighted gone."""
        now = self._loop.time()
        for path, sig in found.items():
            self._sighting(path, sig, now)
        for path in list(self.accounts.seen):
            if path not in found:
                self._sighting(path, None, now)
        self._wake.set()

    # -- settling -------------------------------------------------------------------------------

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
            sigs = await self._signatures(due)
            now = self._loop.time()
            for path, sig in zip(due, sigs, strict=True):
                if sig == UNREAD:
                    self.settler.postpone(path, now)
                    continue
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
            await self._source.save_state(self.name, self._dump_state())
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
