"""Plans: what a run would be, computed by the code that makes runs, written nowhere.

``sluice plan`` (a manual run) and ``sluice triggers test`` (a trigger's event) go the way a real
run goes — the version read and refused as ``daemon.intake.manual`` / ``daemon.intake.event_rules``
do, the params validated or templated the same way, then :meth:`RunCreation.plan` (reuse, the
concurrency rule, the step plans of :meth:`RunCreation.create`) — and stop before the write: no
event, run or step row, no reused output linked, no capacity claimed. The ready steps are then
placed by :meth:`Dispatcher.preview`, which places as a claim does and reserves nothing.

What a plan says holds *now*: a run made later is decided again (data, agents and active runs
move).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from daemon.dispatch.dispatcher import Dispatcher
from daemon.dispatch.registry import Registry
from daemon.errors import BadRequest, NotFound
from daemon.intake.event_rules import decide_event, recorded_fields
from daemon.intake.events import storable_key
from daemon.intake.manual import ManualRuns, read_version, resolution_of
from daemon.planning.contexts import Datastores
from daemon.planning.creation import Draft, RunCreation
from daemon.planning.sample_events import (
    S3_FILES_NOT_YET,
    Ignored,
    TestInput,
    check_input,
    cron_event,
    file_event,
    finished_run_event,
    message_event,
)
from daemon.rules.admission import Verdict, refuse_version
from daemon.rules.placement import Placed
from daemon.store import triggering as trigger_store
from daemon.store.catalog import get_trigger
from triggers.base import TriggerEvent
from triggers.specs import CronSource, EventSource, FilesSource, NatsSource


@dataclass(frozen=True, slots=True)
class StepPreview:
    """One step run of the planned run: its first status, reuse (``reuse`` as ``GET /runs/{id}``
    gives it), the agent a ready step would go to now or why a step would wait."""

    name: str
    status: str | None
    fingerprint: str | None
    reuse: Mapping[str, Any] | None
    agent: str | None = None
    waiting: str | None = None
    partition_of: str | None = None
    partitions: Mapping[str, int] | None = None
    """A step that fans out: how many partitions, how many reused."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reused": self.status == "reused",
            "reused_from": None if self.reuse is None else self.reuse.get("reused_from"),
            "fingerprint": self.fingerprint,
            "reuse": self.reuse,
            "agent": self.agent,
            "waiting": self.waiting,
            "partition_of": self.partition_of,
            "partitions": self.partitions,
        }


@dataclass(slots=True)
class Plan:
    """What a run would be. ``outcome``: ``run``, ``held``, ``skipped``, ``rejected``, ``duplicate``
    (as a trigger event's outcome), or ``ignored`` (the source would make no event of the input)."""

    pipeline: str | None
    version: int | None
    resolution: str | None
    outcome: str
    reason: str | None = None
    params: Mapping[str, Any] | None = None
    steps: list[StepPreview] = field(default_factory=list)
    trigger: str | None = None
    event: Mapping[str, Any] | None = None
    ahead: int = 0
    """Ready steps of other runs waiting for agents now: they take free capacity first."""

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "version": self.version,
            "resolution": self.resolution,
            "outcome": self.outcome,
            "reason": self.reason,
            "params": self.params,
            "trigger": self.trigger,
            "event": self.event,
            "ahead": self.ahead,
            "steps": [step.to_json() for step in self.steps],
            "written": False,
        }


class Planner:
    """Answers plans and trigger tests for the API."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        creation: RunCreation,
        manual: ManualRuns,
        dispatcher: Dispatcher,
        registry: Registry,
        datastores: Datastores,
    ) -> None:
        self._pool = pool
        self._creation = creation
        self._manual = manual
        self._dispatcher = dispatcher
        self._registry = registry
        self._datastores = datastores

    async def plan_run(
        self, pipeline: str, *, params: Mapping[str, Any], version: int | None = None, reuse: bool = True
    ) -> Plan:
        """The run ``sluice run`` would make now.

        Raises:
            NotFound: no such pipeline or version.
            Invalid: the params do not match the version's schema (details name ``params.X``).
        """
        async with self._pool.acquire() as conn:
            record = await read_version(conn, pipeline, version)
            spec = self._creation.specs.of(record)
            # As a run is refused: a disabled version first, whatever the params.
            if (refused := refuse_version(pipeline, record.version, record.status)) is not None:
                draft = Draft(spec, dict(params), reuse=reuse)
                draft.verdict = refused
            else:
                draft = self._manual.draft(spec, params, reuse=reuse)
                await self._creation.plan(conn, [draft])
        return self._plan_of(draft, resolution_of(version))

    async def test_trigger(self, name: str, given: TestInput) -> Plan:
        """What trigger ``name``'s event of ``given`` would become now.

        Raises:
            NotFound: no such trigger.
            BadRequest: ``given`` does not fit the trigger's source (the message names the field).
        """
        async with self._pool.acquire() as conn:
            record = await get_trigger(conn, name)
            target = await trigger_store.read_target(conn, name)
            if record is None or target is None:
                raise NotFound(f"trigger {name} does not exist")
            on = msgspec.convert(record.spec["on"], EventSource)
            check_input(on, given)
            received = datetime.now(UTC)
            event = await self._sample(name, on, given, received)
            resolution = "pinned" if target.pinned else "default"
            if isinstance(event, Ignored):
                plan = Plan(target.pipeline, target.version, resolution, "ignored", event.reason)
                plan.trigger = name
                return plan
            # A test takes no event id (that would use the sequence): ${event.id} reads as null.
            fields, unstorable = recorded_fields(event, received, None)
            decided = await decide_event(conn, self._creation, name, target, fields, unstorable=unstorable)
            if isinstance(decided, Draft):
                await self._creation.plan(conn, [decided])
                plan = self._plan_of(decided, resolution)
            else:
                plan = _refused(target, decided, resolution)
            # As the sink answers a repeat: the same (trigger, dedupe key) recorded makes nothing.
            found = await trigger_store.find_events(conn, [(name, storable_key(event.dedupe_key))])
            if (first := found.get((name, storable_key(event.dedupe_key)))) is not None:
                plan.outcome = "duplicate"
                plan.reason = f"trigger {name} recorded this event already: event {first[0]}, run {first[1]}"
        plan.trigger = name
        plan.event = {"dedupe_key": event.dedupe_key, "fields": fields}
        return plan

    async def _sample(
        self, name: str, on: EventSource, given: TestInput, received: datetime
    ) -> TriggerEvent | Ignored:
        if isinstance(on, CronSource):
            return cron_event(name, on, given.at, received)
        if isinstance(on, FilesSource):
            assert given.file is not None
            if on.datastore in self._datastores.stores:
                raise BadRequest(f"file: {on.datastore} is an s3 datastore: {S3_FILES_NOT_YET}")
            root = self._datastores.paths.get(on.datastore)
            return await asyncio.to_thread(file_event, name, on, given.file, root)
        if isinstance(on, NatsSource):
            return message_event(name, on, given.event, given.subject)
        return finished_run_event(name, on, given.event)

    def _plan_of(self, draft: Draft, resolution: str) -> Plan:
        version, verdict = draft.version, draft.verdict
        plan = Plan(
            version.pipeline,
            version.version,
            resolution,
            verdict.outcome,
            verdict.reason,
            dict(draft.params),
        )
        if verdict.outcome == "rejected" or not draft.decisions:
            return plan
        plans = draft.steps
        if not plans:  # skipped: no step is written; what reuse decided still tells
            plan.steps = [
                StepPreview(name, None, d.fingerprint, d.explanation) for name, d in draft.decisions.items()
            ]
            return plan
        ready = [name for name, step in plans.items() if step.status == "ready"]
        placed = self._dispatcher.preview(draft.context(), version, ready) if ready else {}
        plan.ahead = len(self._dispatcher)
        fanned: dict[str, dict[str, int]] = {}
        for step in plans.values():
            if step.partition_of is not None:
                counts = fanned.setdefault(step.partition_of, {"count": 0, "reused": 0})
                counts["count"] += 1
                counts["reused"] += step.status == "reused"
        for name, step in plans.items():
            agent = waiting = None
            if (where := placed.get(name)) is not None:
                if isinstance(where, Placed):
                    agent = self._registry.agents[where.agent_id].name
                else:
                    waiting = where.reason
            elif draft.held:
                waiting = "the run is held: it waits for a concurrency slot"
            elif step.status == "pending":
                upstream = [up for up in version.graph.get(name, ()) if plans[up].status not in ("reused",)]
                waiting = "waits for " + ", ".join(upstream) if upstream else None
            plan.steps.append(
                StepPreview(
                    name,
                    step.status,
                    step.fingerprint,
                    step.explanation,
                    agent=agent,
                    waiting=waiting,
                    partition_of=step.partition_of,
                    partitions=fanned.get(name) if version.steps.get(name, None) is not None else None,
                )
            )
        return plan


def _refused(target: trigger_store.Target, verdict: Verdict, resolution: str) -> Plan:
    return Plan(target.pipeline, target.version, resolution, verdict.outcome, verdict.reason)
