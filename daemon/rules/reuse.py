"""Whether a step of a new run is reused, and why (a decision, no I/O).

A step whose fingerprint matches an earlier succeeded step run whose outputs still exist is
``reused``: it links those outputs and never reaches an agent. Otherwise it runs, and the
explanation says what changed since the pipeline's previous run of it (or why reuse was off). A
run's first step statuses follow: reused steps are final, the steps they unblock ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from daemon.documents.specs import FromDatastore, StepSpec
from daemon.rules.partitions import Partition
from daemon.rules.states import settle
from daemon.rules.step_fingerprints import changed


@dataclass(frozen=True, slots=True)
class Origin:
    """The earlier step run whose outputs a reused step links."""

    step_run_id: int
    run_id: UUID
    step: str
    outputs: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"run_id": str(self.run_id), "step": self.step, "step_run_id": self.step_run_id}


@dataclass(frozen=True, slots=True)
class Earlier:
    """The step as the pipeline's previous run had it: what a step that runs is compared with."""

    run_id: UUID
    status: str
    components: dict[str, str] | None
    item: Any = None
    """A partition's item (``{"files": [...]}`` for files), which new partitions stick to."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One step's fingerprint and whether it is reused (``origin``), with the explanation shown by
    ``GET /runs/{id}`` and ``sluice runs show`` under ``reuse``."""

    fingerprint: str
    components: dict[str, str]
    origin: Origin | None
    explanation: dict[str, Any]
    partition: Partition | None = None
    """For a partition of a ``foreach`` step, which one."""


def decide(
    step: StepSpec,
    *,
    fingerprint: str,
    components: dict[str, str],
    run_reuse: bool,
    candidate: Origin | None,
    present: bool,
    earlier: Earlier | None,
    blind: list[str],
) -> Decision:
    """The decision on ``step``: ``candidate`` is the latest succeeded step run with its fingerprint
    (looked up only when the run and the step allow reuse), ``present`` whether its outputs still
    exist, ``blind`` why the daemon cannot see some input's data (never reused then)."""
    reused = candidate is not None and present
    explanation = explain(
        step,
        run_reuse=run_reuse,
        candidate=candidate,
        reused=reused,
        earlier=earlier,
        components=components,
        blind=blind,
    )
    return Decision(fingerprint, components, candidate if reused else None, explanation)


def explain(
    step: StepSpec,
    *,
    run_reuse: bool,
    candidate: Origin | None,
    reused: bool,
    earlier: Earlier | None,
    components: dict[str, str],
    blind: list[str],
) -> dict[str, Any]:
    """The ``reuse`` object of a step: ``outcome`` (reused | executed | off), ``reused_from``,
    ``changed`` (component names that differ from the pipeline's previous run of the step) and
    ``reason``, one line for a person."""
    differs = changed(earlier.components, components) if earlier is not None and earlier.components else []
    explanation: dict[str, Any] = {"outcome": "executed", "reused_from": None, "changed": differs}
    if reused:
        assert candidate is not None
        explanation |= {
            "outcome": "reused",
            "reused_from": candidate.to_json(),
            "changed": [],
            "reason": f"nothing changed: the outputs of step {candidate.step} of run {candidate.run_id}",
        }
    elif not run_reuse:
        explanation |= {"outcome": "off", "reason": "the run asked for no reuse (--no-reuse)"}
    elif not step.reuse:
        explanation |= {"outcome": "off", "reason": "reuse: false on this step"}
    elif blind:
        explanation["reason"] = "the daemon cannot see an input's data: " + "; ".join(blind)
    elif candidate is not None:
        explanation["reason"] = (
            f"unchanged since run {candidate.run_id}, but the outputs of its step {candidate.step} are gone"
        )
    elif earlier is None or not earlier.components:
        explanation["reason"] = "first run of this step"
    elif differs:
        explanation["reason"] = f"changed since run {earlier.run_id}: " + ", ".join(differs)
    else:
        explanation["reason"] = (
            f"unchanged since run {earlier.run_id}, which has not succeeded (step {earlier.status})"
        )
    return explanation


def first_statuses(
    graph: Mapping[str, tuple[str, ...]], decisions: Mapping[str, Decision], *, held: bool
) -> dict[str, str]:
    """Each step's status as its run is made (or admitted): reused, or as the graph allows (ready
    when everything it waits for was reused). A held run's steps all wait: it is planned again when
    it is admitted, and only then does reuse apply."""
    statuses = {name: "pending" if held or decisions[name].origin is None else "reused" for name in graph}
    if not held:
        statuses |= settle(statuses, graph)
    return statuses


def reused_links(decisions: Mapping[str, Decision]) -> dict[str, tuple[str, str]]:
    """Reused step -> (run id, step) whose outputs it links (``RunContext.reused``)."""
    return {
        name: (str(decision.origin.run_id), decision.origin.step)
        for name, decision in decisions.items()
        if decision.origin is not None
    }


def key_of(source: FromDatastore) -> str:
    """What identifies a datastore input's data: the datastore, the path as written, the mode (the
    rendered path follows from it and the run's values, which are the same for every step)."""
    return f"{source.datastore}\0{source.path}\0{source.hash}"
