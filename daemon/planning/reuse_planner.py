"""Reuse at planning time: every step of a new run gets its fingerprint, and a step whose fingerprint
matches an earlier succeeded step run whose outputs still exist is ``reused`` — it links those
outputs and never reaches an agent. Every decision says why (``Decision.explanation``).

A whole run is planned at once, before it is inserted: a step's fingerprint stands for its outputs
downstream (``daemon.rules.step_fingerprints``), so a step below one that must run is still reused
when its own fingerprint is unchanged (its upstream re-runs only because, say, its outputs were
deleted). Datastore inputs are fingerprinted as they are when the run is created, concurrently and
off the event loop.

A step that fans out (``foreach``) is planned as its partitions (``daemon.planning.fan_out``): each
gets its own fingerprint, covering its own files, item or shard, and its own decision; the step
itself is never reused whole, and its decision says how its partitions went.

Database work: one round trip for the earlier step runs with the same fingerprints and the steps of
the pipeline's previous run (what a miss is compared with); one before it for the digests agents
reported for the run's images, when its steps have images; one more, first, for the previous run's
file partitions when a step fans out over files. Several runs planned together (a batch of trigger
events, :meth:`ReusePlanner.plan_many`) share those round trips.
"""

from __future__ import annotations

import asyncio
import graphlib
import os
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from obstore.exceptions import BaseError

from daemon.documents.references import DEFAULT_DATASTORE
from daemon.documents.specs import FromDatastore, OverFiles, StepSpec
from daemon.documents.template import TemplateError, render
from daemon.errors import Invalid, SluiceError, Unavailable
from daemon.planning.contexts import Datastores, VersionSpec, run_context
from daemon.planning.data_fingerprints import MISSING, DataFingerprints, DataUnreadable
from daemon.planning.fan_out import (
    Fanned,
    copy_reused,
    fan_out,
    fanned_decision,
    fanned_only,
    link_reused,
)
from daemon.planning.store_fingerprints import StoreFingerprints
from daemon.rules.lineage import step_inputs
from daemon.rules.partitions import Partition, item_of, name_of, partitions_of, spread, step_of
from daemon.rules.rendering import RunContext, run_values
from daemon.rules.reuse import Decision, Earlier, decide, first_statuses, key_of
from daemon.rules.states import advance
from daemon.rules.step_fingerprints import StepShape, fingerprint, shape_of, step_components
from daemon.store.images import image_digests
from daemon.store.new_runs import StepPlan
from daemon.store.reuse import look_up
from kit.objectstore import StoreError, published, reason_of

log = structlog.get_logger(__name__)

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
    components: dict[str, dict[str, str]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    wanted: set[str] = field(default_factory=set)
    blind: dict[str, list[str]] = field(default_factory=dict)
    steps: dict[str, StepSpec] = field(default_factory=dict)
    """Each step run's spec, by run name: a partition ``score[3]`` has its step's."""
    partitions: dict[str, Partition] = field(default_factory=dict)


class ReusePlanner:
    def __init__(
        self, datastores: Datastores, data: DataFingerprints, objects: StoreFingerprints | None = None
    ) -> None:
        self._datastores = datastores
        self._data = data
        self._objects = objects or StoreFingerprints()
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
        if isinstance(decisions, Invalid):
            raise decisions
        return decisions

    async def plan_many(
        self, conn: asyncpg.Connection, requests: Sequence[PlanRequest]
    ) -> list[dict[str, Decision] | Invalid]:
        """Each request's decisions (by step name), in order, with one look-up for them all; or why
        it cannot be planned (a step cannot fan out). A later run of a pipeline compares itself with
        an earlier one of ``requests`` (as if created after it)."""
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
        fanned = await self._fan_out(conn, requests)
        prints = [
            self._fingerprint(request, data, blind, images, fans)
            if isinstance(fans, dict)
            else _Fingerprinted()
            for request, (data, blind), fans in zip(requests, found, fanned, strict=True)
        ]
        candidates, earlier = await look_up(
            conn,
            sorted({request.version.pipeline for request in requests}),
            [printed.fingerprints[name] for printed in prints for name in printed.wanted],
        )
        present = await self._outputs_present(candidates.values()) if candidates else {}
        planned = []
        for request, printed, fans in zip(requests, prints, fanned, strict=True):
            if isinstance(fans, Invalid):
                planned.append(fans)
                continue
            previous = earlier.get(request.version.pipeline, {})
            decisions = {}
            for name, step in printed.steps.items():
                candidate = candidates.get(printed.fingerprints[name]) if name in printed.wanted else None
                decided = decide(
                    step,
                    fingerprint=printed.fingerprints[name],
                    components=printed.components[name],
                    run_reuse=request.reuse,
                    candidate=candidate,
                    present=candidate is not None and present[candidate.step_run_id],
                    earlier=previous.get(name),
                    blind=printed.blind[name],
                )
                partition = printed.partitions.get(name)
                decisions[name] = decided if partition is None else replace(decided, partition=partition)
            for step in request.version.fanning:
                decisions[step] = fanned_decision(step, decisions)
            planned.append(decisions)
            earlier[request.version.pipeline] = {
                name: Earlier(
                    request.run_id,
                    "reused" if decision.origin else "pending",
                    decision.components,
                    None if decision.partition is None else item_of(decision.partition),
                )
                for name, decision in decisions.items()
            }
        return planned

    def _fingerprint(
        self,
        request: PlanRequest,
        data: dict[str, str],
        blind: dict[str, str],
        images: Mapping[str, str],
        fanned: Mapping[str, Fanned],
    ) -> _Fingerprinted:
        """Every step's components and fingerprint, in run order, then its partitions' (a step that
        fans out is never reused whole: its partitions are, one by one), and the step runs that
        may be reused."""
        version, run_id = request.version, request.run_id
        printed = _Fingerprinted()
        seen: dict[str, str] = {}  # each step's fingerprint as the steps below it see it
        run = {"pipeline": version.pipeline, "version": str(version.version), "id": str(run_id)}
        unique = {"run id": str(run_id)}
        for name, shape in self._shapes_of(version).items():
            step = version.steps[name]
            keys = [key_of(source) for source in shape.data.values()]
            if name in fanned:
                # The fanned-out input's data is what its partitions cover, however they are cut.
                data = data | dict.fromkeys(
                    keys, fingerprint({"partitions": ",".join(p for _, p in fanned[name])})
                )
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
            printed.steps[name] = step
            printed.components[name] = parts
            printed.fingerprints[name] = fingerprint(parts)
            # A step that always runs (side effects) may give its downstream steps new data each time.
            seen[name] = printed.fingerprints[name] if step.reuse else fingerprint(parts | unique)
            if name in fanned:
                self._partition_prints(
                    printed, step, parts, fanned[name], wanted=request.reuse and step.reuse
                )
            elif request.reuse and step.reuse:
                printed.wanted.add(name)
        return printed

    @staticmethod
    def _partition_prints(
        printed: _Fingerprinted, step: StepSpec, parts: dict[str, str], fanned: Fanned, *, wanted: bool
    ) -> None:
        """Each partition's components: its step's, with what the partition covers in place of the
        fanned-out input's data (or beside the step's, for items and shards)."""
        assert step.foreach is not None
        over = step.foreach.over
        covered = f"input {over.input}" if isinstance(over, OverFiles) else "partition"
        for partition, covers in fanned:
            name = name_of(step.name, partition.index)
            own = parts | {covered: covers}
            printed.steps[name] = step
            printed.partitions[name] = partition
            printed.blind[name] = printed.blind[step.name]
            printed.components[name] = own
            printed.fingerprints[name] = fingerprint(own)
            if wanted:
                printed.wanted.add(name)

    async def _fan_out(
        self, conn: asyncpg.Connection, requests: Sequence[PlanRequest]
    ) -> list[dict[str, Fanned] | Invalid]:
        """Each request's foreach steps' partitions (step -> partitions), or why it cannot have them
        (a step's input outside its datastore, or unreadable). File partitions stick to the
        pipeline's previous run's, read first (one more round trip, only for them)."""
        fanning = [
            [step for step in request.version.steps.values() if step.foreach is not None]
            for request in requests
        ]
        if not any(fanning):
            return [{} for _ in requests]
        earlier: dict[str, dict[str, Earlier]] = {}
        files = {
            request.version.pipeline
            for request, steps in zip(requests, fanning, strict=True)
            if any(isinstance(step.foreach.over, OverFiles) for step in steps)
        }
        if files:
            _, earlier = await look_up(conn, sorted(files), [])
        made: list[dict[str, Fanned] | Invalid] = []
        for request, steps in zip(requests, fanning, strict=True):
            previous = earlier.get(request.version.pipeline, {})
            made.append(await self._fans(request, steps, previous))
        return made

    async def _fans(
        self, request: PlanRequest, steps: Sequence[StepSpec], previous: Mapping[str, Earlier]
    ) -> dict[str, Fanned] | Invalid:
        values = run_values(run_context(request.version, request.run_id, request.params))
        fans: dict[str, Fanned] = {}
        for step in steps:
            try:
                fans[step.name] = await fan_out(
                    step,
                    request.params,
                    values,
                    datastores=self._datastores,
                    data=self._data,
                    objects=self._objects,
                    earlier=previous,
                )
            except (TemplateError, DataUnreadable) as exc:
                return Invalid(f"step {step.name} cannot fan out: {exc.message}")
        return fans

    async def link_reused(self, run_id: UUID, decisions: Mapping[str, Decision]) -> None:
        """Reused partitions' outputs linked into the run's (:func:`fan_out.link_reused`, off the
        event loop), or copied in an ``s3`` default (:func:`fan_out.copy_reused`); only where the
        daemon sees the default datastore."""
        if not any(d.partition is not None and d.origin is not None for d in decisions.values()):
            return
        if (location := self._datastores.stores.get(DEFAULT_DATASTORE)) is not None:
            try:
                store = self._objects.store(location)
                await copy_reused(store, location.uri(""), str(run_id), decisions)
            except (BaseError, StoreError) as exc:
                raise Unavailable(f"cannot copy reused partitions' outputs: {reason_of(exc)}") from None
        elif (root := self._datastores.paths.get(DEFAULT_DATASTORE)) is not None:
            await asyncio.to_thread(link_reused, root, str(run_id), decisions)

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
        wanted: dict[str, tuple[str, Awaitable[str]]] = {}
        blind: dict[str, str] = {}
        values = run_values(context)
        read_by_partitions = fanned_only(context.spec.steps) if request.version.fanning else set()
        for step in context.spec.steps:
            for name, source in step.inputs.items():
                if not isinstance(source, FromDatastore):
                    continue
                key = key_of(source)
                if key in read_by_partitions or key in wanted:
                    continue  # read once: by its partitions (their fingerprints stand for it), or already
                try:
                    wanted[key] = self._reading(source, render(source.path, values))
                except TemplateError as exc:
                    blind[key] = f"input {name} of step {step.name}: {exc.message}"
        results = await asyncio.gather(*(reading for _, reading in wanted.values()), return_exceptions=True)
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

    async def _outputs_present(self, candidates: Iterable[Any]) -> dict[int, bool]:
        """Whether every output of each candidate is still there: a directory the daemon sees, or
        on an ``s3`` default, an output published in it (:func:`kit.objectstore.published`: its
        manifests, not leftovers of an upload that never finished)."""
        local, stored = [], []
        for origin in candidates:
            on_s3 = any(path.startswith("s3://") for path in origin.outputs.values())
            (stored if on_s3 else local).append(origin)
        present = await asyncio.to_thread(_directories_present, local) if local else {}
        found = await asyncio.gather(*(self._published(origin.outputs.values()) for origin in stored))
        return present | {origin.step_run_id: ok for origin, ok in zip(stored, found, strict=True)}

    async def _published(self, uris: Iterable[str]) -> bool:
        """Whether each of ``uris`` is an output published in the ``default`` datastore as it is now
        (an output recorded in another bucket, or before ``default`` moved, is not reused)."""
        location = self._datastores.stores.get(DEFAULT_DATASTORE)
        if location is None:
            return False
        base = location.uri("")
        try:
            store = self._objects.store(location)
            for uri in uris:
                if not uri.startswith(base) or await published(store, uri[len(base) :]) is None:
                    return False
        except (DataUnreadable, BaseError, StoreError) as exc:
            reason = exc.message if isinstance(exc, SluiceError) else reason_of(exc)
            log.warning("reuse_outputs_unchecked", datastore=DEFAULT_DATASTORE, reason=reason)
            return False
        return True

    def _reading(self, source: FromDatastore, relative: str) -> tuple[str, Awaitable[str]]:
        """Where the input's data is as the daemon sees it (a path, or an ``s3://`` URI), and its
        fingerprint to await.

        Raises:
            TemplateError: unknown datastore, or ``relative`` leaves it.
        """
        content = source.hash == "content"
        where = self._datastores.where(source.datastore, relative)
        store = self._datastores.stores.get(source.datastore)
        if store is not None:
            return where, self._objects.of(store, relative, content=content)
        return where, self._data.of(where, content=content, within=self._datastores.paths[source.datastore])


def step_plans(
    version: VersionSpec,
    decisions: Mapping[str, Decision],
    *,
    held: bool,
) -> dict[str, StepPlan]:
    """Each step run of a run as it is written (made or admitted): its first status
    (:func:`first_statuses`; a step that fans out runs as its partitions) and what reuse decided for
    it; partitions follow the steps, each with its step, index and item (what each reads comes with
    :func:`with_inputs`, for a run that is made)."""
    statuses = first_statuses(version.graph, decisions, held=held)
    # A held run's partitions are planned when it is admitted: its files may change until then.
    fanned = {} if held else {name: d.partition for name, d in decisions.items() if d.partition}
    if not held and version.fanning:
        statuses |= {name: "reused" if decisions[name].origin else "pending" for name in fanned}
        statuses |= _spread_first(version, statuses, fanned)
    plans = {}
    for name, status in statuses.items():
        decision = decisions[name]
        origin = decision.origin if status == "reused" else None
        partition = fanned.get(name)
        plans[name] = StepPlan(
            status=status,
            fingerprint=decision.fingerprint,
            components=decision.components,
            reused_from=origin.step_run_id if origin else None,
            outputs=origin.outputs if origin else {},
            explanation=decision.explanation,
            partition_of=None if partition is None else step_of(name),
            partition=None if partition is None else partition.index,
            item=None if partition is None else item_of(partition),
        )
    return plans


def with_inputs(
    plans: Mapping[str, StepPlan], version: VersionSpec, decisions: Mapping[str, Decision], run: RunContext
) -> dict[str, StepPlan]:
    """``plans`` with what each step run reads (lineage), rendered in ``run``'s context (reused links
    included); a step that fans out reads through its partitions, not itself."""
    values = run_values(run)
    fanning = set(version.fanning)
    found = {}
    for name, plan in plans.items():
        if name in fanning:
            found[name] = plan
            continue
        step = version.steps[name if plan.partition_of is None else plan.partition_of]
        partition = decisions[name].partition
        found[name] = replace(
            plan, inputs=step_inputs(run, step, decisions[name].components, values, partition)
        )
    return found


def _spread_first(
    version: VersionSpec, statuses: Mapping[str, str], fanned: Mapping[str, Partition]
) -> dict[str, str]:
    """A new run's steps that fan out: those ready run as their partitions, those whose every
    partition was reused are done, and what waited only for them is ready."""
    partitions = partitions_of([(name, step_of(name)) for name in fanned], version.fanning)
    ready = {step: "ready" for step in partitions if statuses[step] == "ready"}
    changes = spread(ready, statuses, partitions)
    allowed = {step: version.steps[step].foreach.allowed_failures for step in partitions}
    plan = advance(
        {**statuses, **changes}, version.graph, run_status="queued", partitions=partitions, allowed=allowed
    )
    return changes | plan.changes


def _directories_present(candidates: Sequence[Any]) -> dict[int, bool]:
    """Whether every output directory of each candidate still exists (blocking: run in a thread)."""
    return {
        origin.step_run_id: all(os.path.isdir(path) for path in origin.outputs.values())
        for origin in candidates
    }
