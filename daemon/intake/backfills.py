"""The backfill worker: on the leading daemon, turns each running backfill's range into the events the
live source would have made, and offers them to the one sink (:class:`daemon.intake.events.Ingest`),
a batch per backfill per turn.

Exactly once: the events carry the live dedupe keys, so an event offered again (after a crash, before
its position was committed) or one a live fire or an earlier backfill made is answered ``duplicate``
and runs nothing. The position reached is committed after each batch.

At most ``max_active`` of a backfill's runs are active: each turn asks the store which of the runs it
started are still active, and gives the batch that many free slots (:class:`Allowance`); the sink
defers (does not record) an event whose run would take a slot beyond them or beyond its pipeline's
limit, or whose trigger is paused, and the position stops before it. Runs over as they are made
(every step reused) take no slot, so an unchanged range goes at ingest speed; after a turn that
deferred, only as many events as there are free slots are offered (:class:`Pace`).

A backfill that cannot go on (its datastore has no local path, its trigger's source changed, its
version is disabled) ends ``failed`` with the reason; a database error is retried, with backoff.

Live triggers go first: a turn offers at most ``BATCH`` events per backfill and yields before the
next; the live sources' events share the sink's group commits with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec
import structlog

from daemon.errors import Invalid, NotFound, Unavailable
from daemon.intake.backfill_requests import files_to_replay
from daemon.intake.events import MAX_BATCH, Backfilled, Deferred, Ingest
from daemon.planning.contexts import Datastores
from daemon.planning.sample_events import S3_FILES_NOT_YET
from daemon.rules import backfills as rules
from daemon.runtime.tasks import Supervisor
from daemon.store import backfills as backfill_store
from daemon.store.db import DATABASE_ERRORS
from kit.backoff import Backoff
from triggers.base import EventResult, TriggerEvent
from triggers.cronheap import fire_event
from triggers.cronplan import Schedule
from triggers.files.delivery import first_seen_event
from triggers.files.settle import Signature
from triggers.specs import CronSource, EventSource, FilesSource

log = structlog.get_logger(__name__)

BATCH = MAX_BATCH
"""Events a backfill offers per turn: one group commit's worth."""
IDLE_S = 1.0
"""How long the worker sleeps with nothing to do (an API call on this daemon wakes it at once)."""
WAIT_S = 0.1
"""How long it sleeps when every running backfill waits for a slot (runs ending do not wake it)."""
RETRY_BASE_S, RETRY_CAP_S = 0.5, 30.0
"""The backoff of a backfill whose turn met a database error."""
_DATABASE_ERRORS = (*DATABASE_ERRORS, Unavailable)


@dataclass(slots=True)
class _Job:
    """What the worker keeps of one running backfill between turns (rebuilt from the store when the
    worker starts: nothing here is the truth)."""

    id: int
    source: str
    """The trigger's source when the job was opened: a change ends the backfill."""
    active: list[UUID]
    files: list[rules.FileAt] | None = None
    """A files backfill's files in its range, scanned once per worker start."""
    schedule: Schedule | None = None
    pending: list[tuple[str, TriggerEvent]] = field(default_factory=list)
    """The next events to offer with the position each reaches, made ahead of the turn."""
    pace: rules.Pace = field(default_factory=rules.Pace)


class BackfillWorker:
    def __init__(self, *, pool: asyncpg.Pool, sink: Ingest, datastores: Datastores) -> None:
        self._pool = pool
        self._sink = sink
        self._datastores = datastores
        self._jobs: dict[int, _Job] = {}
        self._retries: dict[int, tuple[Backoff, float]] = {}
        """Backfill -> its backoff and the monotonic time before which its next turn waits."""
        self._wake = asyncio.Event()
        self._supervisor = Supervisor()

    @classmethod
    async def start(
        cls, stack: contextlib.AsyncExitStack, *, pool: asyncpg.Pool, sink: Ingest, datastores: Datastores
    ) -> BackfillWorker:
        """Starts the worker loop (supervised); it stops with ``stack``."""
        worker = cls(pool=pool, sink=sink, datastores=datastores)
        stack.push_async_callback(worker._supervisor.aclose)
        worker._supervisor.start("backfills", worker._loop)
        return worker

    def wake(self) -> None:
        """A backfill was created or cancelled: look now rather than at the next idle tick."""
        self._wake.set()

    async def _loop(self) -> None:
        # A restart (after a crash) starts from the store: positions and active runs re-read.
        self._jobs.clear()
        while True:
            busy = await self.run_iteration()
            if busy is None:
                await asyncio.sleep(0)  # a batch went: let the live sources' events in first
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT_S if busy else IDLE_S):
                    await self._wake.wait()
            self._wake.clear()

    async def run_iteration(self) -> bool | None:
        """One turn: a batch of each running backfill that has a free slot. None when some batch was
        offered; True when backfills run but all wait (for a slot, a resumed trigger); False when none
        runs."""
        running = await backfill_store.running_backfills(self._pool)
        ids = {item.record.id for item in running}
        for gone in set(self._jobs) - ids:
            del self._jobs[gone]  # finished, cancelled or deleted
        for gone in set(self._retries) - ids:
            del self._retries[gone]
        offered = False
        for item in running:
            backfill_id = item.record.id
            if backfill_id in self._retries and time.monotonic() < self._retries[backfill_id][1]:
                continue
            try:
                offered |= await self._turn(item)
            except _DATABASE_ERRORS as exc:
                # Committed as far as its position says; a later turn goes on from there.
                self._jobs.pop(backfill_id, None)
                backoff = self._retries.get(backfill_id, (Backoff(RETRY_BASE_S, RETRY_CAP_S), 0.0))[0]
                delay = backoff.next()
                self._retries[backfill_id] = (backoff, time.monotonic() + delay)
                log.warning("backfill_turn_failed", backfill=backfill_id, error=str(exc), retry_in_s=delay)
            except Exception as exc:
                # Not transient (a datastore with no local path, a trigger no longer replayable):
                # trying again would fail again, forever.
                log.warning("backfill_cannot_go_on", backfill=backfill_id, error=str(exc))
                await self._finish(backfill_id, "failed", str(exc))
            else:
                self._retries.pop(backfill_id, None)
        if offered:
            return None
        return bool(running)

    async def _turn(self, item: backfill_store.Running) -> bool:
        record = item.record
        if item.paused:
            return False  # resumes with its trigger; its events would be recorded ``skipped`` meanwhile
        if item.version_status in (None, "disabled"):
            await self._finish(record.id, "failed", _version_gone(record, item.version_status))
            return False
        job = self._jobs.get(record.id)
        if job is None:
            job = self._jobs[record.id] = await self._open(item)
        if item.source != job.source:
            raise Invalid(
                f"trigger {record.trigger} is now a {item.source} trigger: its backfill cannot go on"
            )
        job.active = await backfill_store.still_active(self._pool, job.active)
        free = record.max_active - len(job.active)
        if not job.pending:
            job.pending = self._next_events(item, job)
        if not job.pending:
            if not job.active:
                await self._conclude(record)
            return False
        if free <= 0:
            return False
        allowance = rules.Allowance(free)
        backfilled = Backfilled(
            record.id, allowance, version=record.version, version_status=item.version_status
        )
        offered = job.pending[: job.pace.size(len(job.pending), free)]
        results = await asyncio.gather(
            *(self._sink.offer(event, backfill=backfilled) for _, event in offered),
            return_exceptions=True,
        )
        job.active.extend(allowance.started)
        done = _committed_prefix(results)
        job.pace.after(allowance, done, deferred=done < len(results) and isinstance(results[done], Deferred))
        if done:
            position = job.pending[done - 1][0]
            if not await backfill_store.advance(self._pool, record.id, position, done):
                return False  # cancelled meanwhile
            del job.pending[:done]
        if done < len(results) and not isinstance(results[done], Deferred):
            failure = results[done]
            if isinstance(failure, NotFound):
                return False  # the trigger was deleted: its backfills went with it
            log.warning("backfill_event_failed", backfill=record.id, error=str(failure))
        return done > 0

    async def _open(self, item: backfill_store.Running) -> _Job:
        record = item.record
        active = await backfill_store.active_runs(self._pool, record.id)
        job = _Job(record.id, item.source, active)
        on = msgspec.convert(item.spec["on"], EventSource)
        if isinstance(on, CronSource):
            job.schedule = Schedule(on.cron, on.timezone)
        elif isinstance(on, FilesSource):
            job.files = await self._scan(on, record)
        else:
            raise Invalid(
                f"trigger {record.trigger} is now a {item.source} trigger, which has no history to replay"
            )
        log.info("backfill_resumed" if record.position else "backfill_started", backfill=record.id)
        return job

    async def _scan(self, on: FilesSource, record: backfill_store.BackfillRecord) -> list[rules.FileAt]:
        await self._datastores.refresh(self._pool)
        if on.datastore in self._datastores.stores:
            raise Invalid(f"datastore {on.datastore} of trigger {record.trigger} is s3: {S3_FILES_NOT_YET}")
        root = self._datastores.paths.get(on.datastore)
        if not root:
            raise Invalid(f"datastore {on.datastore} of trigger {record.trigger} has no local path to scan")
        try:
            return await asyncio.to_thread(files_to_replay, root, on, record.range_from, record.range_to)
        except FileNotFoundError:
            raise Invalid(f"the directory {root} of datastore {on.datastore} does not exist") from None

    def _next_events(self, item: backfill_store.Running, job: _Job) -> list[tuple[str, TriggerEvent]]:
        """The next batch after the committed position: (the position it reaches, the event)."""
        record = item.record
        if job.schedule is not None:
            after = None if record.position is None else datetime.fromisoformat(record.position)
            fires = rules.cron_fires(
                job.schedule, record.range_from, record.range_to, after=after, limit=BATCH
            )
            return [(fire.isoformat(), fire_event(record.trigger, job.schedule, fire)) for fire in fires]
        assert job.files is not None
        on = msgspec.convert(item.spec["on"], FilesSource)
        if on.batch > 0:
            return self._next_windows(record, job.files, on)
        left = rules.files_after(job.files, record.position)[:BATCH]
        return [(f.cursor, _file_event(record.trigger, on.datastore, [f], batched=False)) for f in left]

    def _next_windows(
        self, record: backfill_store.BackfillRecord, files: list[rules.FileAt], on: FilesSource
    ) -> list[tuple[str, TriggerEvent]]:
        reached = -1 if record.position is None else int(record.position.removeprefix("window:"))
        found = []
        for index, window in rules.batch_windows(files, record.range_from, on.batch):
            if index > reached:
                found.append(
                    (f"window:{index}", _file_event(record.trigger, on.datastore, window, batched=True))
                )
                if len(found) == BATCH:
                    break
        return found

    async def _conclude(self, record: backfill_store.BackfillRecord) -> None:
        """Every event offered and every run over: the backfill failed if one of its runs did."""
        tally = (await backfill_store.tallies(self._pool, [record.id])).get(record.id, backfill_store.Tally())
        if tally.active:
            return  # a run the worker did not know of (started before a restart); the next turn
        if tally.failed:
            await self._finish(record.id, "failed", f"{tally.failed} of its {tally.runs} runs failed")
        else:
            await self._finish(record.id, "succeeded")

    async def _finish(
        self, backfill_id: int, status: backfill_store.BackfillStatus, reason: str | None = None
    ) -> None:
        if await backfill_store.finish(self._pool, backfill_id, status, reason) is not None:
            log.info("backfill_finished", backfill=backfill_id, status=status, reason=reason)
        self._jobs.pop(backfill_id, None)


def _committed_prefix(results: list[EventResult | BaseException]) -> int:
    """How many of a batch's events, from the first, were committed (the position moves past them)."""
    for index, result in enumerate(results):
        if not isinstance(result, EventResult):
            return index
    return len(results)


def _file_event(trigger: str, datastore: str, files: list[rules.FileAt], *, batched: bool) -> TriggerEvent:
    signed = [(f.path, Signature(f.mtime_ns, f.size)) for f in files]
    return first_seen_event(trigger, datastore, signed, batched=batched)


def _version_gone(record: backfill_store.BackfillRecord, status: str | None) -> str:
    which = f"version {record.version}" if record.version is not None else "the trigger's version"
    return f"{which} is {'disabled' if status == 'disabled' else 'gone'}: it takes no new runs"
