"""Runs created and finished, counted once each where the change was committed, by pipeline and by
the kind of trigger that asked for the run (``manual`` for REST, the CLI and ``sluice.submit``).

A run records its trigger's name; the kind comes from memory (the event path notes each trigger's
kind as it reads its target) or, for a trigger this daemon has not seen (it finished a run after a
restart, or another daemon's trigger made it), from the store once. A trigger deleted since is
``unknown``.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable

import asyncpg
import structlog

from daemon.metrics import RUNS_CREATED, RUNS_FINISHED, TRIGGER_EVENTS
from daemon.rules.states import FINAL_RUN
from daemon.store import pipelines as pipeline_store
from daemon.store import triggering as trigger_store
from daemon.store.db import DATABASE_ERRORS
from daemon.store.events import EventOutcome
from daemon.store.runs import RunRecord

log = structlog.get_logger(__name__)

MANUAL = "manual"
OUTCOMES: tuple[str, ...] = typing.get_args(EventOutcome)
UNKNOWN = "unknown"


class RunCounts:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._kinds: dict[str, str] = {}

    def note_kind(self, trigger: str, kind: str) -> None:
        """Trigger ``trigger``'s source is ``kind`` (what the event path read)."""
        self._kinds[trigger] = kind

    async def prime(self) -> None:
        """Makes the series an alert asks about exist at 0 for every pipeline (runs by hand) and
        trigger: a labelled counter appears at its first increment, and ``increase()`` over a series
        that appears with a 1 sees nothing, so the first failure after a restart would go unalerted."""
        try:
            pipelines = await pipeline_store.pipeline_names(self._pool)
            targets = await trigger_store.trigger_targets(self._pool)
        except DATABASE_ERRORS as exc:
            log.warning("run_counts_unprimed", error=str(exc) or type(exc).__name__)
            return
        sources = [(pipeline, MANUAL) for pipeline in pipelines]
        for trigger, pipeline, kind in targets:
            self._kinds.setdefault(trigger, kind)
            sources.append((pipeline, kind))
            for outcome in OUTCOMES:
                TRIGGER_EVENTS.labels(trigger, outcome)
        for pipeline, kind in sources:
            RUNS_CREATED.labels(pipeline, kind)
            for status in FINAL_RUN:
                RUNS_FINISHED.labels(pipeline, kind, status)

    async def created(self, run: RunRecord) -> None:
        """``run`` was committed as a new run (also when it is over as it is made)."""
        RUNS_CREATED.labels(run.pipeline, await self._kind_of(run.trigger)).inc()
        if run.status in FINAL_RUN:
            await self.finished([run])

    async def finished(self, runs: Iterable[RunRecord]) -> None:
        """``runs`` were committed in a final status (each once: transitions are guarded in SQL)."""
        for run in runs:
            if run.status in FINAL_RUN:
                RUNS_FINISHED.labels(run.pipeline, await self._kind_of(run.trigger), run.status).inc()

    async def _kind_of(self, trigger: str | None) -> str:
        if trigger is None:
            return MANUAL
        if (kind := self._kinds.get(trigger)) is not None:
            return kind
        try:
            rows = await trigger_store.load_triggers(self._pool, [trigger])
        except DATABASE_ERRORS as exc:
            log.warning("trigger_kind_unread", trigger=trigger, error=str(exc) or type(exc).__name__)
            return UNKNOWN
        # A deleted trigger is remembered as unknown too (no query per finished run); one made again
        # under its name is noted afresh by the event path.
        kind = self._kinds[trigger] = rows[0].source if rows else UNKNOWN
        return kind
