"""Reuse at planning time: every step of a new run gets its fingerprint, and a step whose fingerprint
matches an earlier succeeded step run whose outputs still exist is ``reused`` — it links those
outputs and never reaches an agent. Every decision says why (``Decision.explanation``).

A whole run is planned at once, before it is inserted: a step's fingerprint stands for its outputs
downstream (``daemon.fingerprints``), so a step below one that must run is still reused when its own
fingerprint is unchanged (its upstream re-runs only because, say, its outputs were deleted). Datastore
inputs are fingerprinted as they are when the run is created, concurrently and off the event loop.

Database work: one round trip for the earlier step runs with the same fingerprints and the steps of
the pipeline's previous run (what a miss is compared with); one before it for the digests agents
reported for the run's images, when its steps have images. Several runs planned together (a batch of
trigger events, :meth:`ReusePlanner.plan_many`) share those round trips.
"""

from __future__ import annotations

import asyncio
import graphlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from daemon.contexts import Datastores, VersionSpec, run_context
from daemon.datafingerprint import MISSING, DataFingerprints, DataUnreadable
from daemon.documents.specs import FromDatastore, StepSpec
from daemon.documents.template import TemplateError, render
from daemon.fingerprints import StepShape, changed, fingerprint, shape_of, step_components
from daemon.planner import settle
from daemon.rendering import in_datastore, run_values
from daemon.store.images import image_digests
from daemon.store.new_runs import StepPlan

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


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """A run about to be created: ``params`` already validated; ``reuse`` False: every step runs
    (the run asked for it)."""

    version: VersionSpec
    params: Mapping[str, Any]
    run_id: UUID
    reuse: bool = True


@dataclass(slots=True)
class _Fingerprinted:
    components: dict[str, dict[str, str]]
    fingerprints: dict[str, str]
    wanted: set[str]
    blind: dict[str, list[str]]


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
        """Each step's decision, by step name, for a run ``run_id`` of ``version`` with ``params``."""
        [decisions] = await self.plan_many(conn, [PlanRequest(version, params, run_id, reuse)])
        return decisions

    async def plan_many(
        self, conn: asyncpg.Connection, requests: Sequence[PlanRequest]
    ) -> list[dict[str, Decision]]:
        """Each request's decisions (by step name), in order, with one look-up for them all. A later
        run of a pipeline compares itself with an earlier one of ``requests`` (as if created after it)."""
        if not requests:
            return []
        if any(shape.data for request in requests for shape in self._shapes_of(request.version).values()):
            found = await asyncio.gather(*(self._data_fingerprints(request) for request in requests))
        else:  # no datastore input to look at: spares the event loop a task per run
            found = [({}, {})] * len(requests)
        images = await image_digests(
            conn,
            sorted(
                {step.image for request in requests for step in request.version.steps.values() if step.image}
            ),
        )
        prints = [
            self._fingerprint(request, data, blind, images)
            for request, (data, blind) in zip(requests, found, strict=True)
        ]
        candidates, earlier = await _look_up(
            conn,
            sorted({request.version.pipeline for request in requests}),
            [printed.fingerprints[name] for printed in prints for name in printed.wanted],
        )
        present = await asyncio.to_thread(_outputs_present, candidates.values()) if candidates else {}
        planned = []
        for request, printed in zip(requests, prints, strict=True):
            previous = earlier.get(request.version.pipeline, {})
            decisions = {}
            for name, step in request.version.steps.items():
                candidate = candidates.get(printed.fingerprints[name]) if name in printed.wanted else None
                reused = candidate is not None and present[candidate.step_run_id]
                explanation = _explain(
                    step,
                    run_reuse=request.reuse,
                    candidate=candidate,
                    reused=reused,
                    earlier=previous.get(name),
                    components=printed.components[name],
                    blind=printed.blind[name],
                )
                decisions[name] = Decision(
                    printed.fingerprints[name],
                    printed.components[name],
                    candidate if reused else None,
                    explanation,
                )
            planned.append(decisions)
            earlier[request.version.pipeline] = {
                name: _Earlier(
                    request.run_id, "reused" if decision.origin else "pending", decision.components
                )
                for name, decision in decisions.items()
            }
        return planned

    def _fingerprint(
        self, request: PlanRequest, data: dict[str, str], blind: dict[str, str], images: Mapping[str, str]
    ) -> _Fingerprinted:
        """Every step's components and fingerprint, in run order, and the steps that may be reused."""
        version, run_id = request.version, request.run_id
        printed = _Fingerprinted({}, {}, set(), {})
        seen: dict[str, str] = {}  # each step's fingerprint as the steps below it see it
        run = {"pipeline": version.pipeline, "version": str(version.version), "id": str(run_id)}
        unique = {"run id": str(run_id)}
        for name, shape in self._shapes_of(version).items():
            step = version.steps[name]
            keys = [key_of(source) for source in shape.data.values()]
            parts = step_components(
                shape,
                source_digest=version.source_digest,
                params=request.params,
                run=run,
                upstream=seen,
                data={component: data[key] for component, key in zip(shape.data, keys, strict=True)},
                image_digest=images.get(step.image) if step.image else None,
            )
            printed.blind[name] = [blind[key] for key in keys if key in blind]
            if printed.blind[name]:
                parts |= unique  # data the daemon cannot see may have changed: never reused
            printed.components[name] = parts
            printed.fingerprints[name] = fingerprint(parts)
            # A step that always runs (side effects) may give its downstream steps new data each time.
            seen[name] = printed.fingerprints[name] if step.reuse else fingerprint(parts | unique)
            if request.reuse and step.reuse:
                printed.wanted.add(name)
        return printed

    def _shapes_of(self, version: VersionSpec) -> dict[str, StepShape]:
        """The steps' shapes in run order (each after the steps it waits for), computed once per
        version (versions never change)."""
        key = (version.pipeline, version.version)
        shapes = self._shapes.get(key)
        if shapes is None:
            order = graphlib.TopologicalSorter(version.graph).static_order()
            shapes = self._shapes[key] = {name: shape_of(version.steps[name]) for name in order}
        return shapes

    async def _data_fingerprints(self, request: PlanRequest) -> tuple[dict[str, str], dict[str, str]]:
        """Fingerprint of each datastore input's data (by :func:`key_of`), and why the daemon cannot
        see the data of some (unknown datastore, path outside it, unreadable, nothing there)."""
        context = run_context(request.version, request.run_id, request.params)
        wanted: dict[str, tuple[str, bool, str]] = {}
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
                root = self._datastores.paths[source.datastore]
                wanted[key] = (path, source.hash == "content", root)
        results = await asyncio.gather(
            *(self._data.of(path, content=content, within=root) for path, content, root in wanted.values()),
            return_exceptions=True,
        )
        found: dict[str, str] = dict.fromkeys(blind, UNREADABLE)
        for (key, (path, _, _)), result in zip(wanted.items(), results, strict=True):
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


def all_reused(decisions: Mapping[str, Decision]) -> bool:
    """Whether every step of the run is reused: the run is over as soon as it is created."""
    return all(decision.origin is not None for decision in decisions.values())


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
SELECT 'match' AS kind, NULL AS pipeline, * FROM (
    SELECT DISTINCT ON (fingerprint) fingerprint, id, run_id, name, outputs, status, NULL::jsonb AS components
    FROM step_runs WHERE fingerprint = ANY($2::text[]) AND status = 'succeeded'
    ORDER BY fingerprint, finished_at DESC
) matches
UNION ALL
SELECT 'previous', p.name, s.fingerprint, s.id, s.run_id, s.name, NULL, s.status, s.components
FROM unnest($1::text[]) AS p(name)
CROSS JOIN LATERAL (
    SELECT id FROM runs WHERE pipeline = p.name ORDER BY created_at DESC, id DESC LIMIT 1
) latest
JOIN step_runs s ON s.run_id = latest.id
"""


async def _look_up(
    conn: asyncpg.Connection, pipelines: list[str], fingerprints: list[str]
) -> tuple[dict[str, Origin], dict[str, dict[str, _Earlier]]]:
    """In one round trip: the latest succeeded step run of each of ``fingerprints``, and the steps
    of each pipeline's latest run (what a miss is compared with), by pipeline and step name."""
    matches: dict[str, Origin] = {}
    previous: dict[str, dict[str, _Earlier]] = {}
    for row in await conn.fetch(_LOOK_UP, pipelines, fingerprints):
        if row["kind"] == "match":
            matches[row["fingerprint"]] = Origin(row["id"], row["run_id"], row["name"], row["outputs"])
        else:
            earlier = _Earlier(row["run_id"], row["status"], row["components"])
            previous.setdefault(row["pipeline"], {})[row["name"]] = earlier
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
