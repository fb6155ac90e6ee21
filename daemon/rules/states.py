"""The run state machine over a run's step graph (pure; no I/O).

Step statuses (DESIGN.md): ``pending → ready → dispatched → running → succeeded | failed | reused |
skipped | cancelled``. A step becomes ready when every step it waits for succeeded (or was reused);
it is skipped when a step it waits for failed, was skipped or was cancelled. Independent branches go
on after a failure; the run finishes once every step is in a final status: ``succeeded`` when all
succeeded, ``failed`` when any failed or was skipped. A cancelled run cancels what has not started.

Retries: an attempt that failed (or was cancelled by its agent, not by the run) counts against the
step's ``retries``; the step goes back to ready after :func:`backoff`. A *lost* attempt (agent gone,
assignment refused or unanswered) does not count: the step is simply placed again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from daemon.documents.graph import dependencies
from daemon.documents.specs import PipelineSpec
from daemon.rules.partitions import gathered, spread
from kit.backoff import backoff_s

StepStatus = Literal[
    "pending", "ready", "dispatched", "running", "succeeded", "failed", "reused", "skipped", "cancelled"
]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
AttemptOutcome = Literal["succeeded", "failed", "cancelled", "lost"]

FINAL_STEP: frozenset[str] = frozenset({"succeeded", "failed", "reused", "skipped", "cancelled"})
ACTIVE_STEP: frozenset[str] = frozenset({"dispatched", "running"})
SUCCESS_STEP: frozenset[str] = frozenset({"succeeded", "reused"})
BLOCKING_STEP: frozenset[str] = frozenset({"failed", "skipped", "cancelled"})
FINAL_RUN: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
MAX_BACKOFF_S = 60.0

Graph = Mapping[str, Sequence[str]]
"""Step name -> the steps it waits for."""


def step_graph(spec: PipelineSpec) -> dict[str, tuple[str, ...]]:
    """Each step of ``spec`` (in order) with the steps it waits for (data edges and ``after``)."""
    return {name: tuple(upstream) for name, upstream in dependencies(spec.steps).items()}


def downstream(graph: Graph, step: str) -> list[str]:
    """Every step that waits for ``step``, directly or not, in graph order."""
    found: set[str] = {step}
    changed = True
    while changed:
        changed = False
        for name, upstream in graph.items():
            if name not in found and any(up in found for up in upstream):
                found.add(name)
                changed = True
    return [name for name in graph if name in found and name != step]


def settle(statuses: Mapping[str, str], graph: Graph) -> dict[str, StepStatus]:
    """The pending steps that change: to ``ready`` when all they wait for succeeded, to ``skipped``
    when something they wait for cannot succeed any more (transitively)."""
    current = dict(statuses)
    changes: dict[str, StepStatus] = {}
    changed = True
    while changed:
        changed = False
        for name, upstream in graph.items():
            if current.get(name) != "pending":
                continue
            new: StepStatus | None = None
            if any(current.get(up) in BLOCKING_STEP for up in upstream):
                new = "skipped"
            elif all(current.get(up) in SUCCESS_STEP for up in upstream):
                new = "ready"
            if new is not None:
                current[name] = changes[name] = new
                changed = True
    return changes


def run_outcome(statuses: Mapping[str, str]) -> RunStatus | None:
    """How the run ended, or None while any step is not final."""
    values = set(statuses.values())
    if not values <= FINAL_STEP:
        return None
    if values & {"failed", "skipped"}:
        return "failed"
    if "cancelled" in values:
        return "cancelled"
    return "succeeded"


def backoff(failures: int, base_s: float = 1.0) -> float:
    """Seconds before retry number ``failures`` (1 for the first retry): ``base_s`` doubling, at most
    :data:`MAX_BACKOFF_S`."""
    return backoff_s(failures, base=base_s, cap=MAX_BACKOFF_S)


@dataclass(frozen=True, slots=True)
class StepDecision:
    """What an attempt's end does to its step: the new status, whether it counted as a failure, and
    for a retry, the seconds to wait before it is ready again."""

    status: StepStatus
    counts_as_failure: bool = False
    retry_in_s: float | None = None


def after_attempt(
    outcome: AttemptOutcome, *, failures_before: int, retries: int, run_cancelled: bool, backoff_base_s: float
) -> StepDecision:
    """The step's fate after an attempt ended with ``outcome``; ``failures_before`` counts the failed
    attempts before this one."""
    if outcome == "succeeded":
        return StepDecision("succeeded")
    if run_cancelled:
        return StepDecision("cancelled")
    if outcome == "lost":  # its agent went away, the step did not fail: again, at once, no retry used
        return StepDecision("ready")
    failures = failures_before + 1
    if failures <= retries:
        return StepDecision("ready", counts_as_failure=True, retry_in_s=backoff(failures, backoff_base_s))
    return StepDecision("failed", counts_as_failure=True)


@dataclass(frozen=True, slots=True)
class Plan:
    """Changes to other steps of the run, and the run's final status when it just finished."""

    changes: dict[str, StepStatus] = field(default_factory=dict)
    outcome: RunStatus | None = None


def advance(
    statuses: Mapping[str, str],
    graph: Graph,
    *,
    run_status: str,
    partitions: Mapping[str, Sequence[str]] | None = None,
    allowed: Mapping[str, int | str] | None = None,
) -> Plan:
    """What follows from ``statuses`` (already holding the latest change).

    For a cancelled run, steps not started are cancelled and the run keeps its status. Otherwise
    pending steps are settled and, once every step is final, the run's outcome is given. With
    ``partitions`` (step -> its partitions' run names) and ``allowed`` (step -> its
    ``allowed_failures``), steps that fan out follow their partitions.
    """
    if partitions:
        return _advance_partitioned(statuses, graph, partitions, allowed or {}, run_status=run_status)
    if run_status == "cancelled":
        return Plan(
            {name: "cancelled" for name, status in statuses.items() if status in ("pending", "ready")}
        )
    changes = settle(statuses, graph)
    outcome = None if run_status in FINAL_RUN else run_outcome({**statuses, **changes})
    return Plan(changes, outcome)


def _advance_partitioned(
    statuses: Mapping[str, str],
    graph: Graph,
    partitions: Mapping[str, Sequence[str]],
    allowed: Mapping[str, int | str],
    *,
    run_status: str,
) -> Plan:
    """:func:`advance` for a run with steps that fan out: the graph's steps take the statuses their
    partitions give them, the state machine runs on the graph, and its changes spread to the
    partitions (``daemon.rules.partitions``)."""
    rolled = gathered(statuses, partitions, allowed)
    steps = {name: rolled.get(name, statuses[name]) for name in graph}
    plan = advance(steps, graph, run_status=run_status)
    return Plan(rolled | spread(plan.changes, statuses, partitions), plan.outcome)
