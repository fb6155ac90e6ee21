"""What a committed transition asks of memory and of followers (:class:`Effects`), and where it goes
once the transaction committed (:class:`Aftermath`): capacity freed, the dispatcher, the cached
contexts, the announcements, and admitted runs handed over."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from daemon.dispatch.announce import Announcer
from daemon.dispatch.dispatcher import Dispatcher, ReadyStep
from daemon.dispatch.registry import Registry
from daemon.metrics import STEP_DURATION
from daemon.planning.contexts import RunContexts
from daemon.planning.creation import RunCreation, Written
from daemon.store import runs as run_store


@dataclass(slots=True)
class Effects:
    """What a committed transition asks of memory and of followers."""

    steps: list[tuple[UUID, str, str, dict[str, Any]]] = field(default_factory=list)
    runs: list[run_store.RunRecord] = field(default_factory=list)
    ready: list[ReadyStep] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)
    finished_runs: list[UUID] = field(default_factory=list)
    admitted: list[Written] = field(default_factory=list)
    """Held runs admitted, handed over as every new run is."""
    durations: list[tuple[str, str, float]] = field(default_factory=list)
    """Attempts ended: (pipeline, step, seconds it ran), observed once committed."""


@dataclass(frozen=True, slots=True)
class Aftermath:
    """Where a committed transition's effects go: capacity, the dispatcher, the cached contexts,
    the metrics, the announcements, and admitted runs' hand-over."""

    registry: Registry
    dispatcher: Dispatcher
    contexts: RunContexts
    announcer: Announcer
    creation: RunCreation

    async def apply(self, effects: Effects) -> None:
        for attempt_id in effects.released:
            self.registry.release(attempt_id)
        self.dispatcher.discard(effects.discarded)
        for run_id in effects.finished_runs:
            self.contexts.drop(run_id)
        for pipeline, step, seconds in effects.durations:
            STEP_DURATION.labels(pipeline, step).observe(seconds)
        await self.creation.counts.finished(effects.runs)
        for run_id, name, status, extra in effects.steps:
            self.announcer.step_changed(run_id, name, status, **extra)
        for run in effects.runs:
            await self.announcer.run_changed(run)
        if effects.ready or effects.released:
            self.dispatcher.add(effects.ready)
        for admitted in effects.admitted:
            await self.creation.hand_over(admitted)
