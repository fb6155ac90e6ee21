"""The daemon's ``EventSink``: trigger events in, each event row and its outcome (and run) committed
exactly once, then the run handed to the dispatcher and announced.

Events that arrive together are committed together (a group commit): a sink call queues its event,
and up to ``COMMITTERS`` tasks each take up to ``MAX_BATCH`` queued events into one transaction. An
event alone waits for nobody; under a burst, one transaction's BEGIN, settle and COMMIT serve many
events. A batch the database refuses is retried one event per transaction, so one bad event fails
alone and the others commit.

Per event, in the batch's transaction (contract §3: each event creates at most one run per trigger):

1. insert the event, unique on (trigger, dedupe key), reading the trigger, its version (the pin, or
   the pipeline's default *now*) and the version's status in the same statement; the row says it
   became the run about to be inserted (id made here). A repeat inserts nothing and is answered
   ``duplicate`` with the first event's run;
2. decide: a paused trigger → ``skipped``; a disabled version → ``rejected``; params templated from
   the event's fields that do not validate → ``rejected``; a pipeline at its concurrency limit with
   ``on_limit: skip`` → ``skipped``; else the run, created as a manual run is (``daemon.runs``).

Then the events that did not become runs are settled in one statement, and the batch commits. After
the commit each trigger's ``last_event_at`` moves (at most once a second per trigger: it is a status
field, and writing the trigger row inside the transaction would serialise all events of a trigger on
its row lock).

Round trips per event on the hot path: the event, the reuse lookup and the run; BEGIN, settle and
COMMIT are shared by the batch. Version specs come from the daemon's cache (versions never change).
Reuse planning fingerprints datastore inputs inside the transaction (off the event loop).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from daemon import runs
from daemon.engine import Engine
from daemon.errors import Conflict, Invalid, NotFound, Unavailable
from daemon.resolver import resolve_params
from daemon.store import triggering as trigger_store
from triggers.base import EventResult, TriggerEvent

log = structlog.get_logger(__name__)

TOUCH_INTERVAL_S = 1.0
MAX_BATCH = 64
"""Events per transaction, at most: enough to amortise a commit, few enough to keep one short."""
COMMITTERS = 2
"""Transactions committing events at once: one commits while the next batch gathers."""

_DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
MAX_KEY_CHARS = 512
UNSTORABLE = (
    "the event holds text that cannot be stored (a NUL character or a lone surrogate), replaced by "
    "U+FFFD or '?' here: no run"
)


@dataclass(slots=True)
class _Queued:
    event: TriggerEvent
    received: datetime
    done: asyncio.Future[EventResult] = field(repr=False)


@dataclass(slots=True)
class _Decided:
    result: EventResult | Exception
    handover: runs.Inserted | None = None


class Ingest:
    """Commits trigger events; an instance is the ``EventSink`` every source is started with."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._touched: dict[str, float] = {}
        self._queue: collections.deque[_Queued] = collections.deque()
        self._committers: set[asyncio.Task] = set()

    async def __call__(self, event: TriggerEvent) -> EventResult:
        """Commits ``event`` and what became of it.

        Raises:
            NotFound: the trigger does not exist (deleted while the event was on its way).
            Unavailable: the database failed; nothing was committed, the source offers it again.
        """
        started = time.perf_counter()
        queued = _Queued(event, datetime.now(UTC), asyncio.get_running_loop().create_future())
        self._queue.append(queued)
        if len(self._committers) < COMMITTERS:
            task = asyncio.create_task(self._commit_queued(), name="ingest-commit")
            self._committers.add(task)
        # Shielded: a caller that gives up (its source stopping) does not take the commit with it;
        # its event is committed or not, and offered again either way.
        result = await asyncio.shield(queued.done)
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
        batch: list[_Queued] = []
        try:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                await self._deliver(batch, await self._commit_or_isolate(batch))
        except BaseException as exc:  # cancelled at shutdown: nobody may be left waiting
            for queued in batch:
                self._fail(queued, exc)
            raise
        finally:
            # No await since the queue was last seen empty: a caller that queues after this sees
            # one committer fewer and starts one.
            self._committers.discard(asyncio.current_task())

    async def _commit_or_isolate(self, batch: list[_Queued]) -> list[_Decided | None]:
        """The batch in one transaction; if that fails, each event alone, so that one bad event does
        not sink the others (None for an event whose own commit failed: its caller has the error)."""
        try:
            return list(await self._commit(batch))
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return [None]
            log.warning("trigger_event_batch_failed", events=len(batch), error=str(exc))
        decided: list[_Decided | None] = []
        for queued in batch:
            try:
                decided.extend(await self._commit([queued]))
            except Exception as exc:
                self._fail(queued, exc)
                decided.append(None)
        return decided

    async def _deliver(self, batch: list[_Queued], decided: list[_Decided | None]) -> None:
        """After the commit: runs to the dispatcher, triggers touched, callers answered."""
        for queued, outcome in zip(batch, decided, strict=True):
            if outcome is None:
                continue
            try:
                if outcome.handover is not None:
                    await runs.hand_over(self.engine, outcome.handover)
                if isinstance(outcome.result, EventResult) and outcome.result.outcome != "duplicate":
                    await self._touch(queued.event.trigger, queued.received)
            except Exception:
                # Committed all the same: the dispatcher's sweep finds the run's ready steps.
                log.exception("trigger_event_handover_failed", trigger=queued.event.trigger)
            finally:
                if not queued.done.done():
                    if isinstance(outcome.result, Exception):
                        queued.done.set_exception(outcome.result)
                    else:
                        queued.done.set_result(outcome.result)

    def _fail(self, queued: _Queued, exc: BaseException) -> None:
        """Nothing of the event was committed: the source offers it again."""
        event = queued.event
        if isinstance(exc, Exception) and not isinstance(exc, _DATABASE_ERRORS):
            log.error("trigger_event_failed", trigger=event.trigger, key=event.dedupe_key, exc_info=exc)
        if not queued.done.done():
            queued.done.set_exception(
                Unavailable(f"event {event.dedupe_key!r} of trigger {event.trigger} was not recorded: {exc}")
            )

    async def _touch(self, trigger: str, received: datetime) -> None:
        """``last_event_at``, written at most every ``TOUCH_INTERVAL_S`` per trigger: a status field,
        kept off the hot path's transaction (its row lock would serialise the trigger's events)."""
        now = time.monotonic()
        if now - self._touched.get(trigger, -TOUCH_INTERVAL_S) < TOUCH_INTERVAL_S:
            return
        self._touched[trigger] = now
        try:
            await trigger_store.touch_trigger(self.engine.pool, trigger, received)
        except _DATABASE_ERRORS as exc:
            log.warning("trigger_touch_failed", trigger=trigger, error=str(exc))

    async def _commit(self, batch: list[_Queued]) -> list[_Decided]:
        decided: list[_Decided] = []
        settled: list[trigger_store.Settled] = []
        async with self.engine.pool.acquire() as conn, conn.transaction():
            for queued in batch:
                decided.append(await self._record(conn, queued, settled))
            await trigger_store.settle_events(conn, settled)
        return decided

    async def _record(
        self, conn: asyncpg.Connection, queued: _Queued, settled: list[trigger_store.Settled]
    ) -> _Decided:
        event, name = queued.event, queued.event.trigger
        fields, unstorable = storable({**event.fields, "time": queued.received.isoformat(), "trigger": name})
        key = storable_key(event.dedupe_key)
        run_id = uuid.uuid4()
        recorded = await trigger_store.record_event(conn, name, key, queued.received, fields, run_id)
        if recorded is None:
            return _Decided(NotFound(f"trigger {name} does not exist"))
        if recorded.event_id is None:
            found = await trigger_store.find_event(conn, name, key)
            if found is None:  # cannot be: the insert collided with a committed row
                raise RuntimeError(f"event {key!r} of trigger {name} collided but is gone")
            event_id, first_run = found
            return _Decided(EventResult(event_id=event_id, outcome="duplicate", run_id=_str(first_run)))
        event_id = recorded.event_id
        fields["id"] = event_id
        if unstorable:
            outcome, reason, handover = "rejected", UNSTORABLE, None
        else:
            outcome, reason, handover = await self._decide(conn, recorded, event_id, fields, run_id)
        if handover is None:
            settled.append(trigger_store.Settled(event_id, outcome, reason))
            return _Decided(EventResult(event_id=event_id, outcome=outcome, reason=reason))
        return _Decided(EventResult(event_id=event_id, outcome="run", run_id=str(run_id)), handover)

    async def _decide(
        self,
        conn: asyncpg.Connection,
        recorded: trigger_store.Recorded,
        event_id: int,
        fields: dict,
        run_id: UUID,
    ) -> tuple[str, str, runs.Inserted | None]:
        """(outcome, reason, None) for an event that does not become a run; ("run", "", the run to
        hand over) for one that became run ``run_id``."""
        pipeline, version = recorded.pipeline, recorded.version
        if recorded.paused:
            return "skipped", f"trigger {fields['trigger']} is paused", None
        disabled = f"version {version} of {pipeline} is disabled and takes no new runs"
        if recorded.version_status == "disabled":
            return "rejected", disabled, None
        spec = self.engine.specs.cached(pipeline, version) or await self.engine.specs.load(
            conn, pipeline, version
        )
        what = f"pipeline {pipeline} version {version}"
        try:
            params = resolve_params(spec.spec.params, recorded.bindings, fields, what=what)
            inserted = await runs.insert_in_transaction(
                self.engine,
                conn,
                spec,
                params,
                reuse=True,
                trigger=fields["trigger"],
                event_id=event_id,
                idempotency_key=None,
                resolution="pinned" if recorded.pinned else "default",
                run_id=run_id,
            )
        except Invalid as exc:
            return "rejected", exc.message, None
        except Conflict as exc:
            return "skipped", exc.message, None
        if inserted is None:
            return "rejected", disabled, None
        return "run", "", inserted


def storable_key(key: str) -> str:
    """A dedupe key PostgreSQL can store and index: text it cannot hold replaced (see
    :func:`storable`), and a key longer than ``MAX_KEY_CHARS`` (a file path can be) cut and completed
    with its digest, since an index entry is limited to about 2.7 kB."""
    text, _ = storable(key)
    if len(text) <= MAX_KEY_CHARS:
        return text
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{text[: MAX_KEY_CHARS - 80]}…sha256:{digest}"


def storable(value: Any) -> tuple[Any, bool]:
    """``value`` (JSON-like) with the text PostgreSQL cannot store replaced — NUL characters, and
    lone surrogates that JSON's ``\\ud800`` escapes let through — and whether there was any."""
    if isinstance(value, str):
        clean = value.replace("\0", "\ufffd").encode("utf-8", "replace").decode("utf-8")
        return clean, clean != value
    if isinstance(value, dict):
        clean_dict, changed = {}, False
        for key, item in value.items():
            (key, key_changed), (item, item_changed) = storable(key), storable(item)
            clean_dict[key] = item
            changed = changed or key_changed or item_changed
        return clean_dict, changed
    if isinstance(value, list):
        items = [storable(item) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    return value, False


def _str(run_id: UUID | None) -> str | None:
    return None if run_id is None else str(run_id)
