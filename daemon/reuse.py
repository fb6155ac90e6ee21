"""Reuse at planning time: every step of a new run gets its fingerprint, and a step whose fingerprint
matches an earlier succeeded step run whose outputs still exist is ``reused`` — it links those
outputs and never reaches an agent. Every decision says why (``Decision.explanation``).

A whole run is planned at once, before it is inserted: a step's fingerprint stands for its outputs
downstream (``daemon.fingerprints``), so a step below one that must run is still reused when its own
fingerprint is unchanged (its upstream re-runs only because, say, its outputs were deleted). Datastore
inputs are fingerprinted as they are when the run is created, concurrently and off the event loop.

Database work: one round trip for the earlier step runs with the same fingerprints and the steps of
the pipeline's previous run (what a miss is compared with); one before it for the digests agents
reported for the run's images, when its steps have images.
"""

from __future__ import annotations

import asyncio
import graphlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from daemon.contexts import Datastores, VersionSpec
from daemon.datafingerprint import MISSING, DataFingerprints, DataUnreadable
from daemon.documents.specs import FromDatastore, StepSpec
from daemon.documents.template import TemplateError, render
from daemon.fingerprints import StepShape, changed, fingerprint, shape_of, step_components
from daemon.planner import settle
from daemon.rendering import RunContext, in_datastore, run_values
from daemon.store.images import image_digests
from daemon.store.runs import StepPlan

UNREADABLE = "unreadable"


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
class Decision:
    """One step's fingerprint and whether it is reused (``origin``), with the explanation shown by
    ``GET /runs/{id}`` and ``sluice runs show`` under ``reuse``."""

    fingerprint: str
    components: dict[str, str]
    origin: Origin | None
    explanation: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Earlier:
    run_id: UUID
    status: str
    components: dict[str, str] | None


class ReusePlanner:
    def __init__(self, datastores: Datastores, data: DataFingerprints) -> None:
        self._datastores = datastores
        self._data = data
        self._shapes: dict[tuple[str, int], dict[str, StepShape]] = {}

    async def plan(
        self,
        conn: asyncpg.Connection,
        version: VersionSpec,
        params: Mapping[str, Any],
        *,
        run_id: UUID,
        reuse: bool,
    ) -> dict[str, Decision]:
        """Each step's decision, by step name, for a run ``run_id`` of ``version`` with ``params``
        (already validated); ``reuse`` False: every step runs (the run asked for it)."""
        context = RunContext(
            id=str(run_id),
            pipeline=version.pipeline,
            version=version.version,
            params=params,
            spec=version.spec,
            source_digest=version.source_digest,
        )
        data, blind = await self._data_fingerprints(context)
        images = await image_digests(conn, [step.image for step in version.steps.values() if step.image])
        components: dict[str, dict[str, str]] = {}
        fingerprints: dict[str, str] = {}
        seen: dict[str, str] = {}  # each step's fingerprint as the steps below it see it
        run = {"pipeline": version.pipeline, "version": str(version.version), "id": str(run_id)}
        unique = {"run id": str(run_id)}
        shapes = self._shapes_of(version)
        for name, shape in shapes.items():
            step = version.steps[name]
            values = {component: data[key_of(source)] for component, source in shape.data.items()}
            parts = step_components(
                shape,
                source_digest=version.source_digest,
                params=params,
                run=run,
                upstream=seen,
                data=values,
                image_digest=images.get(step.image) if step.image else None,
            )
            if any(key in blind for key in map(key_of, shape.data.values())):
                parts |= unique  # data the daemon cannot see may have changed: never reused
            components[name] = parts
            fingerprints[name] = fingerprint(parts)
            # A step that always runs (side effects) may give its downstream steps new data each time.
            seen[name] = fingerprints[name] if step.reuse else fingerprint(parts | unique)
        wanted = [name for name, step in version.steps.items() if reuse and step.reuse]
        candidates, earlier = await _look_up(
            conn, version.pipeline, list(version.steps), [fingerprints[name] for name in wanted]
        )
        present = await asyncio.to_thread(_outputs_present, candidates.values()) if candidates else {}
        decisions = {}
        for name, step in version.steps.items():
            candidate = candidates.get(fingerprints[name]) if name in wanted else None
            reused = candidate is not None and present[candidate.step_run_id]
            explanation = _explain(
                step,
                run_reuse=reuse,
                candidate=candidate,
                reused=reused,
                earlier=earlier.get(name),
                components=components[name],
                blind=[
                    blind[key_of(source)] for source in shapes[name].data.values() if key_of(source) in blind
                ],
            )
            decisions[name] = Decision(
                fingerprints[name], components[name], candidate if reused else None, explanation
            )
        return decisions

    def _shapes_of(self, version: VersionSpec) -> dict[str, StepShape]:
        """The steps' shapes in run order (each after the steps it waits for), computed once per
        version (versions never change)."""
        key = (version.pipeline, version.version)
        shapes = self._shapes.get(key)
        if shapes is None:
            order = graphlib.TopologicalSorter(version.graph).static_order()
            shapes = self._shapes[key] = {name: shape_of(version.steps[name]) for name in order}
        return shapes

    async def _data_fingerprints(self, context: RunContext) -> tuple[dict[str, str], dict[str, str]]:
        """Fingerprint of each datastore input's data (by :func:`key_of`), and why the daemon cannot
        see the data of some (unknown datastore, path outside it, unreadable, nothing there)."""
        wanted: dict[str, tuple[str, bool]] = {}
        blind: dict[str, str] = {}
        values = run_values(context)
        for step in context.spec.steps:
            for name, source in step.inputs.items():
                if not isinstance(source, FromDatastore):
                    continue
                key = key_of(source)
                try:
                    path = in_datastore(self._datastores.paths, source.datastore, render(source.path, values))
                except TemplateError as exc:
                    blind[key] = f"input {name} of step {step.name}: {exc.message}"
                    continue
                wanted[key] = (path, source.hash == "content")
        results = await asyncio.gather(
            *(self._data.of(path, content=content) for path, content in wanted.values()),
            return_exceptions=True,
        )
        found: dict[str, str] = dict.fromkeys(blind, UNREADABLE)
        for (key, (path, _)), result in zip(wanted.items(), results, strict=True):
            if isinstance(result, DataUnreadable):
                blind[key] = result.message
            elif isinstance(result, BaseException):
                raise result
            elif result == MISSING:
                blind[key] = f"nothing at {path} (the datastore as the daemon sees it)"
            found[key] = result if isinstance(result, str) else UNREADABLE
        return found, blind


def step_plans(version: VersionSpec, decisions: Mapping[str, Decision], *, held: bool) -> dict[str, StepPlan]:
    """Each step of a run as it is inserted (or admitted): reused, or as the graph allows (ready when
    everything it waits for was reused). A held run's steps all wait: it is planned again when it is
    admitted, and only then does reuse apply."""
    statuses = {
        name: "pending" if held or decisions[name].origin is None else "reused" for name in version.graph
    }
    if not held:
        statuses |= settle(statuses, version.graph)
    plans = {}
    for name, status in statuses.items():
        decision = decisions[name]
        origin = decision.origin if status == "reused" else None
        plans[name] = StepPlan(
            status=status,
            fingerprint=decision.fingerprint,
            components=decision.components,
            reused_from=origin.step_run_id if origin else None,
            outputs=origin.outputs if origin else {},
            explanation=decision.explanation,
        )
    return plans


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


_LOOK_UP = """
SELECT 'match' AS kind, * FROM (
    SELECT DISTINCT ON (fingerprint) fingerprint, id, run_id, name, outputs, status, NULL::jsonb AS components
    FROM step_runs WHERE fingerprint = ANY($3::text[]) AND status = 'succeeded'
    ORDER BY fingerprint, finished_at DESC
) matches
UNION ALL
SELECT 'previous', fingerprint, id, run_id, name, NULL, status, components FROM step_runs
WHERE run_id = (SELECT id FROM runs WHERE pipeline = $1 ORDER BY created_at DESC, id DESC LIMIT 1)
  AND name = ANY($2::text[])
"""


async def _look_up(
    conn: asyncpg.Connection, pipeline: str, steps: list[str], fingerprints: list[str]
) -> tuple[dict[str, Origin], dict[str, _Earlier]]:
    """In one round trip: the latest succeeded step run of each of ``fingerprints``, and the steps
    of the pipeline's latest run (what a miss is compared with), by name."""
    matches: dict[str, Origin] = {}
    previous: dict[str, _Earlier] = {}
    for row in await conn.fetch(_LOOK_UP, pipeline, steps, fingerprints):
        if row["kind"] == "match":
            matches[row["fingerprint"]] = Origin(row["id"], row["run_id"], row["name"], row["outputs"])
        else:
            previous[row["name"]] = _Earlier(row["run_id"], row["status"], row["components"])
    return matches, previous


def _outputs_present(candidates: Any) -> dict[int, bool]:
    """Whether every output directory of each candidate still exists (blocking: run in a thread)."""
    return {
        origin.step_run_id: all(os.path.isdir(path) for path in origin.outputs.values())
        for origin in candidates
    }


def _explain(
    step: StepSpec,
    *,
    run_reuse: bool,
    candidate: Origin | None,
    reused: bool,
    earlier: _Earlier | None,
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
