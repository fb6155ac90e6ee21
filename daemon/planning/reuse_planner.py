"""Reuse at planning time: every step of a new run gets its fingerprint, and a step whose fingerprint
matches an earlier succeeded step run whose outputs still exist is ``reused`` — it links those
outputs and never reaches an agent. Every decision says why (``Decision.explanation``).

A whole run is planned at once, before it is inserted: a step's fingerprint stands for its outputs
downstream (``daemon.rules.step_fingerprints``), so a step below one that must run is still reused
when its own fingerprint is unchanged (its upstream re-runs only because, say, its outputs were
deleted). Datastore inputs are fingerprinted as they are when the run is created, concurrently and
off the event loop.

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

from daemon.documents.specs import FromDatastore
from daemon.documents.template import TemplateError, render
from daemon.planning.contexts import Datastores, VersionSpec, run_context
from daemon.planning.data_fingerprints import MISSING, DataFingerprints, DataUnreadable
from daemon.rules.rendering import in_datastore, run_values
from daemon.rules.reuse import Decision, Earlier, decide, first_statuses, key_of
from daemon.rules.step_fingerprints import StepShape, fingerprint, shape_of, step_components
from daemon.store.images import image_digests
from daemon.store.new_runs import StepPlan
from daemon.store.reuse import look_up

UNREADABLE = "unreadable"


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
        candidates, earlier = await look_up(
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
                decisions[name] = decide(
                    step,
                    fingerprint=printed.fingerprints[name],
                    components=printed.components[name],
                    run_reuse=request.reuse,
                    candidate=candidate,
                    present=candidate is not None and present[candidate.step_run_id],
                    earlier=previous.get(name),
                    blind=printed.blind[name],
                )
            planned.append(decisions)
            earlier[request.version.pipeline] = {
                name: Earlier(request.run_id, "reused" if decision.origin else "pending", decision.components)
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
    """Each step of a run as it is written (made or admitted): its first status
    (:func:`first_statuses`) and what reuse decided for it."""
    plans = {}
    for name, status in first_statuses(version.graph, decisions, held=held).items():
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


def _outputs_present(candidates: Any) -> dict[int, bool]:
    """Whether every output directory of each candidate still exists (blocking: run in a thread)."""
    return {
        origin.step_run_id: all(os.path.isdir(path) for path in origin.outputs.values())
        for origin in candidates
    }
