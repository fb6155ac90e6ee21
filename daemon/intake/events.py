"""The daemon's ``EventSink``: trigger events in, each event row and its outcome (and run) committed
exactly once, then the run handed to the dispatcher and announced.

Events that arrive together are committed together (a group commit): a sink call queues its event,
and up to ``COMMITTERS`` tasks each take up to ``MAX_BATCH`` queued events at a time. A batch costs
the same round trips as one event, so a burst is written at the rate of Python's work per event. A
batch the database refuses is retried one event at a time, so one bad event fails alone and the
others commit.

A batch, in three round trips (contract §3: each event creates at most one run per trigger):

1. read each trigger's target — its version (the pin, or the pipeline's default *now*), the
   version's status, whether the trigger is paused — and take an id for each event;
2. the rules that need no planning (``daemon.rules.admission``): unstorable text, a paused trigger,
   a disabled version, params templated from the event's fields that do not validate; the other
   events become drafts of runs for the one creation path (``daemon.planning.creation``: reuse,
   the concurrency rule, capacity claimed);
3. write every event with its outcome and every run with its steps in one statement, unique on
   (trigger, dedupe key): a repeat writes nothing and is answered ``duplicate`` with the first
   event's run (one more round trip, only then). A version disabled (or a trigger deleted) between 1
   and 3 makes the statement fail as a whole on a foreign key, and the batch is read and written
   again.

After the write each trigger's ``last_event_at`` moves (at most once a second per trigger: it is a
status field, and writing the trigger row with the events would serialise all events of a trigger on
its row lock), in one statement for the batch once its callers have their answers. Version specs
come from the daemon's cache (versions never change). Reuse planning fingerprints datastore inputs
before the write (off the event loop).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from daemon.errors import NotFound, Unavailable
from daemon.intake.event_rules import decide_event, recorded_fields
from daemon.limits import storable
from daemon.metrics import CRON_FIRE_DELAY, TRIGGER_EVENTS
from daemon.planning.creation import Draft, RunCreation, Written
from daemon.rules.admission import RUN, Verdict
from daemon.rules.backfills import Allowance, waits
from daemon.store import triggering as trigger_store
from daemon.store.db import HeldConnection
from triggers.base import EventResult, TriggerEvent

log = structlog.get_logger(__name__)

TOUCH_INTERVAL_S = 1.0
MAX_BATCH = 64
"""Events per write, at most: enough to amortise a commit, few enough to keep one short."""
COMMITTERS = 2
"""Batches being committed at once: one commits while the next gathers."""

_DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
MAX_KEY_CHARS = 512


@dataclass(frozen=True, slots=True)
class Backfilled:
    """Events a backfill offers: tied to it (``events.backfill_id``), run by its ``version`` (None:
    the trigger's target, as for a live event; ``version_status`` as the backfill last read it), and
    each run that would take a slot asks ``allowance`` first."""

    backfill_id: int
    allowance: Allowance
    version: int | None = None
    version_status: str | None = None


class Deferred(Exception):
    """The event was not recorded (its verdict is ``deferred``): its run has no slot now (its
    backfill's or its pipeline's), its trigger is paused or its version disabled. Offer it again
    when one of the backfill's runs has ended, or the trigger is resumed."""


@dataclass(slots=True)
class _Queued:
    event: TriggerEvent
    received: datetime
    done: asyncio.Future[EventResult] = field(repr=False)
    backfill: Backfilled | None = None


@dataclass(slots=True)
class _Event:
    """An event read against its trigger, before it is written: a run to make (``run``, whose
    verdict planning gives), or the verdict that it makes none, with the reason."""

    queued: _Queued
    event_id: int
    key: str
    fields: dict[str, Any]
    target: trigger_store.Target
    verdict: Verdict = RUN
    run: Draft | None = None
    repeat: bool = False
    """Recorded already, or earlier in the batch: answered as a duplicate, nothing written."""

    @property
    def decided(self) -> Verdict:
        return self.run.verdict if self.run is not None else self.verdict

    @property
    def deferred(self) -> bool:
        """A backfill's event that waits: not written, answered ``Deferred``."""
        return self.decided.outcome == "deferred"


@dataclass(slots=True)
class _Decided:
    result: EventResult | Exception
    handover: Written | None = None


class Ingest:
    """Commits trigger events; an instance is the ``EventSink`` every source is started with."""

    def __init__(self, *, pool: asyncpg.Pool, creation: RunCreation) -> None:
        self._pool = pool
        self._creation = creation
        self._specs = creation.specs
        self._touched: dict[str, float] = {}
        self._queue: collections.deque[_Queued] = collections.deque()
        self._committers: set[asyncio.Task] = set()
        self._connections: list[HeldConnection] = []
        """Connections of committers that ended, kept for the next ones (at most ``COMMITTERS``)."""

    async def aclose(self) -> None:
        """Lets the committers finish, then gives their connections back (the sources stopped)."""
        await asyncio.gather(*self._committers, return_exceptions=True)
        while self._connections:
            await self._connections.pop().release()

    async def __call__(self, event: TriggerEvent) -> EventResult:
        """Commits ``event`` and what became of it.

        Raises:
            NotFound: the trigger does not exist (deleted while the event was on its way).
            Unavailable: the database failed; nothing was committed, the source offers it again.
        """
        return await self.offer(event)

    async def offer(self, event: TriggerEvent, *, backfill: Backfilled | None = None) -> EventResult:
        """As a call, for an event that ``backfill`` (when given) offers; raises ``Deferred`` too."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        queued = _Queued(event, datetime.now(UTC), loop.create_future(), backfill)
        self._queue.append(queued)
        if len(self._committers) < COMMITTERS:
            task = asyncio.create_task(self._commit_queued(), name="ingest-commit")
            self._committers.add(task)
        # Shielded: a caller that gives up (its source stopping) does not take the commit with it;
        # its event is committed or not, and offered again either way.
        result = await asyncio.shield(queued.done)
        TRIGGER_EVENTS.labels(event.trigger, result.outcome).inc()
        # Runs are logged by the run's own lines; what did not become a run is worth an info line.
        emit = log.debug if result.outcome in ("run", "duplicate") else log.info
        emit(
            "trigger_event",
            trigger=event.trigger,
            event_id=result.event_id,
            dedupe_key=event.dedupe_key,
            outcome=result.outcome,
            run_id=result.run_id,
            reason=result.reason,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return result

    async def _commit_queued(self) -> None:
        held = self._connections.pop() if self._connections else HeldConnection(self._pool)
        batch: list[_Queued] = []
        try:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                await self._deliver(batch, await self._commit_or_isolate(held, batch))
        except BaseException as exc:  # cancelled at shutdown: nobody may be left waiting
            for queued in batch:
                self._fail(queued, exc)
            raise
        finally:
            # No await since the queue was last seen empty: a caller that queues after this sees
            # one committer fewer and starts one.
            self._connections.append(held)
            self._committers.discard(asyncio.current_task())

    async def _commit_or_isolate(self, held: HeldConnection, batch: list[_Queued]) -> list[_Decided | None]:
        """The batch in one write; if that fails, each event alone, so that one bad event does not
        sink the others (None for an event whose own commit failed: its caller has the error)."""
        try:
            return list(await self._commit(await held.get(), batch))
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return [None]
            log.warning("trigger_event_batch_failed", events=len(batch), error=str(exc))
        decided: list[_Decided | None] = []
        for queued in batch:
            try:
                decided.extend(await self._commit(await held.get(), [queued]))
            except Exception as exc:
                self._fail(queued, exc)
                decided.append(None)
        return decided

    async def _deliver(self, batch: list[_Queued], decided: list[_Decided | None]) -> None:
        """After the commit: runs to the dispatcher, callers answered, then the triggers touched."""
        touches: dict[str, datetime] = {}
        for queued, outcome in zip(batch, decided, strict=True):
            if outcome is None:
                continue
            try:
                if isinstance(outcome.result, EventResult) and outcome.result.outcome != "duplicate":
                    trigger = queued.event.trigger
                    touches[trigger] = max(queued.received, touches.get(trigger, queued.received))
                if outcome.handover is not None:
                    await self._creation.hand_over(outcome.handover)
            except Exception:
                # Committed all the same: the dispatcher's sweep finds the run's ready steps, and
                # hand_over sent its claimed steps before anything that could fail.
                log.exception("trigger_event_handover_failed", trigger=queued.event.trigger)
            finally:
                if not queued.done.done():
                    if isinstance(outcome.result, Exception):
                        queued.done.set_exception(outcome.result)
                    else:
                        queued.done.set_result(outcome.result)
        await self._touch(touches)

    def _fail(self, queued: _Queued, exc: BaseException) -> None:
        """Nothing of the event was committed: the source offers it again."""
        event = queued.event
        if isinstance(exc, Exception) and not isinstance(exc, _DATABASE_ERRORS):
            log.error("trigger_event_failed", trigger=event.trigger, key=event.dedupe_key, exc_info=exc)
        if not queued.done.done():
            queued.done.set_exception(
                Unavailable(f"event {event.dedupe_key!r} of trigger {event.trigger} was not recorded: {exc}")
            )

    async def _touch(self, received: Mapping[str, datetime]) -> None:
        """``last_event_at`` of the triggers that had events (the latest time each was received),
        written at most every ``TOUCH_INTERVAL_S`` per trigger: a status field, kept off the hot
        path's transaction (its row lock would serialise the trigger's events)."""
        now = time.monotonic()
        due = {
            trigger: at
            for trigger, at in received.items()
            if now - self._touched.get(trigger, -TOUCH_INTERVAL_S) >= TOUCH_INTERVAL_S
        }
        if not due:
            return
        self._touched.update(dict.fromkeys(due, now))
        try:
            await trigger_store.touch_triggers(self._pool, due)
        except _DATABASE_ERRORS as exc:
            log.warning("trigger_touch_failed", triggers=len(due), error=str(exc))

    async def _commit(self, conn: asyncpg.Connection, batch: list[_Queued]) -> list[_Decided]:
        try:
            return await self._commit_once(conn, batch)
        except asyncpg.ForeignKeyViolationError:
            # Changed between the read and the write (a version disabled, a trigger deleted): the
            # write took nothing; what the store says now decides.
            return await self._commit_once(conn, batch)

    async def _commit_once(self, conn: asyncpg.Connection, batch: list[_Queued]) -> list[_Decided]:
        keys = [(queued.event.trigger, storable_key(queued.event.dedupe_key)) for queued in batch]
        read = await trigger_store.read_batch(conn, keys)
        # Each (trigger, dedupe key) -> its first event's id and run: what a repeat is answered with.
        first = dict(read.recorded)
        events: list[_Event | _Decided] = []
        for queued, (trigger, key), event_id in zip(batch, keys, read.ids, strict=True):
            event = await self._read(conn, queued, key, event_id, read.targets.get(trigger))
            if isinstance(event, _Event):
                # Recorded already (a redelivery), or twice in this batch: answered as a duplicate,
                # with no planning, and taking no concurrency slot.
                event.repeat = (trigger, key) in first or any(
                    isinstance(other, _Event) and (other.queued.event.trigger, other.key) == (trigger, key)
                    for other in events
                )
            events.append(event)
        new = [event for event in events if isinstance(event, _Event) and not event.repeat]
        drafts = [event.run for event in new if event.run is not None]

        async def write(_: Sequence[Draft]) -> tuple[list[trigger_store.NewEvent], trigger_store.Written]:
            rows = [self._row(event) for event in new if not event.deferred]
            return rows, await trigger_store.insert_events(conn, rows)

        rows, written = await self._creation.create(conn, drafts, write)
        # Committed: nothing below may undo it, or leave a written run without its answer.
        for row in rows:
            if (earlier := written.earlier.get(row.id)) is not None:
                first[row.trigger, row.dedupe_key] = earlier
            elif row.id in written.events:
                first[row.trigger, row.dedupe_key] = (row.id, row.run.id if row.run else None)
        # A repeat of an event committed while the write ran (a race) is looked up now.
        raced = [
            key
            for key, event in zip(keys, events, strict=True)
            if isinstance(event, _Event) and not event.deferred and key not in first
        ]
        lost: Exception | None = None
        if raced:
            try:
                first |= await trigger_store.find_events(conn, raced)
            except _DATABASE_ERRORS as exc:  # only those repeats go unanswered: offered again
                lost = exc
        return [self._answer(event, written, first, lost) for event in events]

    async def _read(
        self,
        conn: asyncpg.Connection,
        queued: _Queued,
        key: str,
        event_id: int,
        target: trigger_store.Target | None,
    ) -> _Event | _Decided:
        """The facts of the event and the rules that need no planning: a run to make (``run``), or
        the verdict that it makes none; a ``_Decided`` NotFound when the trigger is gone (nothing is
        written)."""
        event, name = queued.event, queued.event.trigger
        if target is None:
            return _Decided(NotFound(f"trigger {name} does not exist"))
        self._creation.counts.note_kind(name, target.kind)
        fields, unstorable = recorded_fields(event, queued.received, event_id)
        read = _Event(queued, event_id, key, fields, target)
        if (backfill := queued.backfill) is not None and backfill.version is not None:
            target = dataclasses.replace(
                target,
                version=backfill.version,
                pinned=True,
                version_status=backfill.version_status or target.version_status,
            )
            read.target = target
        if backfill is not None and (
            waiting := waits(
                name,
                paused=target.paused,
                pipeline=target.pipeline,
                version=target.version,
                status=target.version_status,
            )
        ):
            read.verdict = waiting
            return read
        decided = await decide_event(conn, self._creation, name, target, fields, unstorable=unstorable)
        if isinstance(decided, Draft):
            decided.allowance = None if backfill is None else backfill.allowance
            read.run = decided
        else:
            read.verdict = decided
        return read

    def _row(self, event: _Event) -> trigger_store.NewEvent:
        """The event as it is written, with the run it makes (held or not)."""
        draft, verdict = event.run, event.decided
        run = None
        if draft is not None and verdict.creates:
            run = trigger_store.NewRun(
                id=draft.run_id,
                pipeline=draft.version.pipeline,
                version=draft.version.version,
                params=draft.params,
                resolution="pinned" if event.target.pinned else "default",
                held=draft.held,
                finished=draft.finished,
                steps=draft.steps,
            )
        return trigger_store.NewEvent(
            id=event.event_id,
            trigger=event.queued.event.trigger,
            dedupe_key=event.key,
            received_at=event.queued.received,
            fields=event.fields,
            outcome="run" if verdict.creates else verdict.outcome,
            reason=verdict.reason,
            run=run,
            backfill_id=None if event.queued.backfill is None else event.queued.backfill.backfill_id,
        )

    def _answer(
        self,
        event: _Event | _Decided,
        written: trigger_store.Written,
        first: dict[tuple[str, str], tuple[int, UUID | None]],
        lost: Exception | None,
    ) -> _Decided:
        if not isinstance(event, _Event):
            return event
        trigger = event.queued.event.trigger
        if event.deferred:
            if event.run is not None:
                self._creation.unclaim(event.run)
            reason = event.decided.reason
            return _Decided(Deferred(f"event {event.key!r} of trigger {trigger} waits: {reason}"))
        if event.repeat or event.event_id not in written.events:
            if event.run is not None:
                self._creation.unclaim(event.run)  # its run was not written either
            found = first.get((trigger, event.key))
            if found is None:
                what = f"event {event.key!r} of trigger {trigger} repeats one that"
                return _Decided(
                    Unavailable(f"{what} could not be read: {lost}")
                    if lost is not None
                    else RuntimeError(f"{what} is gone")
                )
            event_id, first_run = found
            return _Decided(EventResult(event_id=event_id, outcome="duplicate", run_id=_str(first_run)))
        if (
            event.target.kind == "cron"
            and event.queued.backfill is None  # a replayed fire is late on purpose
            and (delay := cron_fire_delay(event.queued.event.fields, event.queued.received)) is not None
        ):
            CRON_FIRE_DELAY.observe(delay)
        verdict = event.decided
        if event.run is None or not verdict.creates:
            return _Decided(
                EventResult(event_id=event.event_id, outcome=verdict.outcome, reason=verdict.reason)
            )
        run_id = event.run.run_id
        record, steps = written.runs[run_id]
        return _Decided(
            EventResult(event_id=event.event_id, outcome="run", run_id=str(run_id)),
            Written(record, steps, event.run),
        )


def storable_key(key: str) -> str:
    """A dedupe key PostgreSQL can store and index: text it cannot hold replaced (see
    :func:`storable`), and a key longer than ``MAX_KEY_CHARS`` (a file path can be) cut and completed
    with its digest, since an index entry is limited to about 2.7 kB."""
    text, _ = storable(key)
    if len(text) <= MAX_KEY_CHARS:
        return text
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{text[: MAX_KEY_CHARS - 80]}…sha256:{digest}"


def cron_fire_delay(fields: Mapping[str, Any], received: datetime) -> float | None:
    """Seconds from a cron fire's scheduled time (its event's ``scheduled_time``, with its offset)
    to ``received``, when the sink took its event; None without a readable scheduled time."""
    scheduled = fields.get("scheduled_time")
    try:
        instant = datetime.fromisoformat(scheduled)
    except (TypeError, ValueError):
        return None
    if instant.tzinfo is None:
        return None
    return (received - instant).total_seconds()


def _str(run_id: UUID | None) -> str | None:
    return None if run_id is None else str(run_id)
