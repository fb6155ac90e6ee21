"""Whether a run is made, held or refused, with the reason (a decision, no I/O).

One concurrency rule for every way a run is made: a trigger event, a manual run (REST, CLI,
``sluice.submit``) and the admission of a held run.

- The limit is the one of the version the run runs (``concurrency`` in its document; a version is
  immutable, so a new limit is a new version).
- It counts the pipeline's active runs (queued or running, not held) whatever their version: versions
  of a pipeline share what the limit protects.
- A run whose every step is reused is over as it is made: it takes no slot and is never held.
- At the limit, ``on_limit: queue`` makes the run held (it waits for a slot, oldest first) and
  ``on_limit: skip`` makes none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from daemon.documents.specs import Concurrency
from daemon.errors import Conflict, Invalid, SluiceError

Outcome = Literal["run", "held", "skipped", "rejected", "deferred"]
"""``deferred``: a backfill's event that waits (not recorded, offered again later;
:mod:`daemon.rules.backfills`)."""

UNSTORABLE = (
    "the event holds text that cannot be stored (a NUL character or a lone surrogate), replaced by "
    "U+FFFD or '?' here: no run"
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What becomes of a would-be run. ``error`` says why there is none (``skipped``, ``rejected``):
    raised to whoever asked for the run, recorded with the event that asked."""

    outcome: Outcome
    error: SluiceError | None = None

    @property
    def reason(self) -> str | None:
        return None if self.error is None else self.error.message

    @property
    def creates(self) -> bool:
        """Whether a run is written (held or not)."""
        return self.outcome in ("run", "held")


RUN = Verdict("run")
HELD = Verdict("held")


def refuse_event(trigger: str, *, unstorable: bool, paused: bool) -> Verdict | None:
    """An event that makes no run whatever its pipeline says, or None."""
    if unstorable:
        return Verdict("rejected", Invalid(UNSTORABLE))
    if paused:
        return Verdict("skipped", Conflict(f"trigger {trigger} is paused"))
    return None


def refuse_version(pipeline: str, version: int, status: str) -> Verdict | None:
    """A version that takes no new runs (disabled), or None."""
    return Verdict("rejected", disabled(pipeline, version)) if status == "disabled" else None


def disabled(pipeline: str, version: int) -> Conflict:
    """Why a disabled version makes no run."""
    return Conflict(f"version {version} of {pipeline} is disabled and takes no new runs")


def counted(runs: Iterable[tuple[str, Concurrency | None]]) -> set[str]:
    """The pipelines whose active runs must be counted (and locked) before ``runs`` (pipeline, the
    limit of the version each runs) are made: those where one of them has a limit."""
    return {pipeline for pipeline, limit in runs if limit is not None}


class Slots:
    """The concurrency slots of the counted pipelines as a batch of runs takes them, in order."""

    def __init__(self, active: Mapping[str, int]) -> None:
        self._active = dict(active)
        """Counted pipeline -> its runs that hold a slot (the database's count, then this batch's)."""

    def free(self, pipeline: str, limit: Concurrency | None) -> bool:
        """Whether a run of ``pipeline`` under ``limit`` that runs a step would get a slot now."""
        return limit is None or self._active.get(pipeline, 0) < limit.max_active_runs

    def take(self, pipeline: str, limit: Concurrency | None, *, finished: bool) -> Verdict:
        """The verdict on a run of ``pipeline`` whose version has ``limit``; ``finished``: every step
        of it is reused. A run that goes ahead in a counted pipeline takes a slot."""
        if finished or pipeline not in self._active:
            return RUN
        taken = self._active[pipeline]
        if limit is not None and taken >= limit.max_active_runs:
            return HELD if limit.on_limit == "queue" else Verdict("skipped", at_limit(pipeline, taken, limit))
        self._active[pipeline] = taken + 1
        return RUN


def at_limit(pipeline: str, active: int, limit: Concurrency) -> Conflict:
    """Why no run is made at the concurrency limit with ``on_limit: skip``."""
    return Conflict(
        f"pipeline {pipeline} already has {active} active run{'s' if active != 1 else ''} "
        f"(concurrency.max_active_runs {limit.max_active_runs}, on_limit skip): no run created"
    )
