"""The daemon's ``EventSink``: one trigger event in, its event row and outcome (and run) committed
in one transaction, then the run handed to the dispatcher and announced.

The transaction, in order (contract §3: each event creates at most one run per trigger):

1. insert the event, unique on (trigger, dedupe key), reading the trigger, its version (the pin, or
   the pipeline's default *now*) and the version's status in the same statement; a repeat inserts
   nothing and is answered ``duplicate`` with the first event's run;
2. decide: a paused trigger → ``skipped``; a disabled version → ``rejected``; params templated from
   the event's fields that do not validate → ``rejected``; a pipeline at its concurrency limit with
   ``on_limit: skip`` → ``skipped``; else the run, created as a manual run is (``daemon.runs``);
3. write the outcome on the event row; commit. After the commit the trigger's ``last_event_at`` moves
   (at most once a second per trigger: it is a status field, and writing the trigger row inside the
   transaction would serialise all events of a trigger on its row lock).

Round trips on the hot path: BEGIN, the event, the run (one statement with its steps), the outcome,
COMMIT. Version specs come from the daemon's cache (versions never change).
"""

from __future__ import annotations

import time
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


class Ingest:
    """Commits trigger events; an instance is the ``EventSink`` every source is started with."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._touched: dict[str, float] = {}

    async def _touch(self, trigger: str, received: datetime) -> None:
        """``last_event_at``, written at most every ``TOUCH_INTERVAL_S`` per trigger: a status field,
        kept off the hot path's transaction (its row lock would serialise the trigger's events)."""
        now = time.monotonic()
        if now - self._touched.get(trigger, -TOUCH_INTERVAL_S) < TOUCH_INTERVAL_S:
            return
        self._touched[trigger] = now
        try:
            await trigger_store.touch_trigger(self.engine.pool, trigger, received)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("trigger_touch_failed", trigger=trigger, error=str(exc))

    async def __call__(self, event: TriggerEvent) -> EventResult:
        """Commits ``event`` and what became of it.

        Raises:
            NotFound: the trigger does not exist (deleted while the event was on its way).
            Unavailable: the database failed; nothing was committed, the source offers it again.
        """
        started = time.perf_counter()
        received = datetime.now(UTC)
        try:
            result, handover = await self._commit(event, received)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise Unavailable(
                f"event {event.dedupe_key!r} of trigger {event.trigger} was not recorded: {exc}"
            ) from exc
        if handover is not None:
            await runs.hand_over(self.engine, *handover)
        if result.outcome != "duplicate":
            await self._touch(event.trigger, received)
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

    async def _commit(self, event: TriggerEvent, received: datetime) -> tuple[EventResult, tuple | None]:
        name = event.trigger
        fields = {**event.fields, "time": received.isoformat(), "trigger": name}
        async with self.engine.pool.acquire() as conn, conn.transaction():
            recorded = await trigger_store.record_event(conn, name, event.dedupe_key, received, fields)
            if recorded is None:
                raise NotFound(f"trigger {name} does not exist")
            if recorded.event_id is None:
                found = await trigger_store.find_event(conn, name, event.dedupe_key)
                if found is None:  # cannot be: the insert collided with a committed row
                    raise Unavailable(f"event {event.dedupe_key!r} of trigger {name} collided but is gone")
                event_id, run_id = found
                return EventResult(event_id=event_id, outcome="duplicate", run_id=_str(run_id)), None
            event_id = recorded.event_id
            fields["id"] = event_id
            outcome, reason, inserted = await self._decide(conn, name, recorded, event_id, fields)
            run_id = inserted[0].id if inserted is not None else None
            await trigger_store.settle_event(conn, event_id, outcome=outcome, run_id=run_id, reason=reason)
        result = EventResult(event_id=event_id, outcome=outcome, run_id=_str(run_id), reason=reason)
        return result, inserted

    async def _decide(
        self,
        conn: asyncpg.Connection,
        name: str,
        recorded: trigger_store.Recorded,
        event_id: int,
        fields: dict,
    ) -> tuple[str, str | None, Any]:
        """(outcome, reason, (run, steps, spec) when a run was inserted)."""
        pipeline, version = recorded.pipeline, recorded.version
        if recorded.paused:
            return "skipped", f"trigger {name} is paused", None
        if recorded.version_status == "disabled":
            return "rejected", f"version {version} of {pipeline} is disabled and takes no new runs", None
        spec = self.engine.specs.cached(pipeline, version) or await self.engine.specs.load(
            conn, pipeline, version
        )
        what = f"pipeline {pipeline} version {version}"
        try:
            params = resolve_params(spec.spec.params, recorded.bindings, fields, what=what)
            inserted = await runs.insert_in_transaction(
                conn,
                spec,
                params,
                reuse=True,
                trigger=name,
                event_id=event_id,
                idempotency_key=None,
                resolution="pinned" if recorded.pinned else "default",
            )
        except Invalid as exc:
            return "rejected", exc.message, None
        except Conflict as exc:
            return "skipped", exc.message, None
        if inserted is None:
            return "rejected", f"version {version} of {pipeline} is disabled and takes no new runs", None
        run, steps, spec, _held = inserted
        return "run", None, (run, steps, spec)


def _str(run_id: UUID | None) -> str | None:
    return None if run_id is None else str(run_id)
