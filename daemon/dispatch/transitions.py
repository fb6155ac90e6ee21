"""Run and step transitions driven by what agents report and by the state machine
(``daemon.rules.states``), each in one transaction whose in-memory effects (capacity released, steps
handed to the dispatcher, announcements) follow only after it committed.

Step events are idempotent: an event for an attempt that is no longer active changes nothing. They
are applied in batches (whatever the consumer has received), one transaction per batch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
import structlog

from daemon.dispatch.dispatcher import ReadyStep
from daemon.dispatch.effects import Aftermath, Effects
from daemon.documents.references import DEFAULT_DATASTORE
from daemon.planning.contexts import Datastores, RunContexts, VersionSpec
from daemon.planning.creation import RunCreation, admit_held
from daemon.rules.partitions import partitions_of, step_of, tolerated_failures
from daemon.rules.rendering import output_path
from daemon.rules.states import FINAL_STEP, Plan, advance, after_attempt
from daemon.store import attempt_reports as report_store
from daemon.store import runs as run_store
from daemon.store import steps as step_store
from daemon.store.attempts import ACTIVE_ATTEMPT
from runners.protocol import StepFinished, StepStarted

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Reported:
    """A step event with the agent NATS authenticated as its sender (its subject's name)."""

    agent_id: str
    event: StepStarted | StepFinished


@dataclass(slots=True)
class Applied:
    """What a batch of step events did: for each event (in order) whether it changed anything, and
    the attempts (id, agent) whose agents must be told to stop (they started in a cancelled run)."""

    changed: list[bool]
    cancels: list[tuple[int, str]] = field(default_factory=list)


class Transitions:
    """Run and step transitions, each in one transaction, their effects handed to ``aftermath`` once it
    committed."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        contexts: RunContexts,
        datastores: Datastores,
        creation: RunCreation,
        aftermath: Aftermath,
        retry_backoff_s: float,
    ) -> None:
        self._pool = pool
        self._contexts = contexts
        self._datastores = datastores
        self._creation = creation
        self.aftermath = aftermath
        self._retry_backoff_s = retry_backoff_s

    async def apply_events(self, events: Sequence[Reported]) -> Applied:
        """Applies a batch of step events in one transaction, then their effects in memory.

        Per attempt, a started event applies before a finished one; an event repeated in the batch, or
        for an attempt that is unknown or no longer active on that agent, changes nothing. A started
        attempt keeps the image digest its agent reported, which also becomes the latest digest of the
        step's image (:mod:`daemon.store.images`). A finished attempt decides its step's fate
        (succeeded, retry later, failed for good); the state machine then settles each run touched once
        (readies, skips, ends it). Locks follow the store's order across the whole batch: its attempts
        (by id), their runs' steps (by id), the runs (by id), then the images started attempts reported
        (by reference). A batch of starts only is one statement without an explicit transaction (the
        common case after dispatch).

        Raises what the database raises, having applied nothing; the caller may retry the events one by
        one so that one that cannot be applied does not hold back the others.
        """
        applied = Applied([False] * len(events))
        # The first start of each attempt from each agent: only the attempt's own agent can start it.
        starts: dict[tuple[int, str], int] = {}
        start_rows: list[report_store.AttemptStart] = []
        ends: list[tuple[int, str, StepFinished]] = []
        for index, (agent_id, event) in enumerate((item.agent_id, item.event) for item in events):
            if isinstance(event, StepFinished):
                ends.append((index, agent_id, event))
            elif (event.attempt_id, agent_id) not in starts:
                starts[(event.attempt_id, agent_id)] = index
                start_rows.append(
                    report_store.AttemptStart(
                        event.attempt_id, agent_id, event.started_at, event.image_digest
                    )
                )
        effects = Effects()
        if not ends:
            started = await report_store.start_attempts(self._pool, start_rows)
            _note_started(started, events, starts, effects, applied)
        else:
            async with self._pool.acquire() as conn, conn.transaction():
                attempts = await report_store.lock_attempts(conn, {item.event.attempt_id for item in events})
                runs = await run_store.lock_runs(conn, {attempt.run_id for attempt in attempts.values()})
                started = await report_store.start_attempts(conn, start_rows)
                _note_started(started, events, starts, effects, applied)
                running = {item.attempt_id for item in started}
                await self._finish(conn, ends, attempts, runs, running, effects, applied)
        await self.aftermath.apply(effects)
        return applied

    async def _finish(
        self,
        conn: asyncpg.Connection,
        ends: Sequence[tuple[int, str, StepFinished]],
        attempts: Mapping[int, report_store.LockedAttempt],
        runs: Mapping[UUID, tuple[run_store.RunRecord, list[run_store.StepState]]],
        running: set[int],
        effects: Effects,
        applied: Applied,
    ) -> None:
        """Ends the attempts (locked by the caller) that are still active on the agent that reports them,
        records each step's fate and settles their runs."""
        by_run: dict[UUID, list[tuple[int, StepFinished, report_store.LockedAttempt, str | None]]] = {}
        attempt_ends: list[report_store.AttemptEnd] = []
        ended: set[int] = set()  # an attempt ends once; a repeat of its event in the batch changes nothing
        for index, agent_id, event in ends:
            attempt = attempts.get(event.attempt_id)
            if attempt is None or attempt.agent_id != agent_id or attempt.id in ended:
                continue
            if attempt.id not in running and attempt.status not in ACTIVE_ATTEMPT:
                continue
            ended.add(attempt.id)
            error = event.error
            if error is None and event.status == "failed":
                error = f"exit code {event.exit_code}"
            attempt_ends.append(
                report_store.AttemptEnd(
                    attempt.id, event.status, event.exit_code, error, event.started_at, event.finished_at
                )
            )
            by_run.setdefault(attempt.run_id, []).append((index, event, attempt, error))
        await report_store.finish_attempts(conn, attempt_ends)
        results: list[step_store.StepResult] = []
        changes: dict[int, str] = {}
        warnings: dict[int, str] = {}
        outcomes: dict[UUID, str] = {}
        run_of_step: dict[int, UUID] = {}
        versions: dict[UUID, VersionSpec] = {}
        for run_id, items in by_run.items():
            if run_id not in runs:
                raise LookupError(f"run {run_id} vanished")  # runs are never deleted while they have attempts
            run, steps = runs[run_id]
            _, version = await self._contexts.load(conn, run.id, run)
            versions[run.id] = version
            # A step started in this batch is still ``dispatched`` here: the state machine treats both alike.
            statuses = {step.name: step.status for step in steps}
            states = {step.name: step for step in steps}
            for index, event, attempt, error in items:
                step_name = step_of(attempt.step)  # a partition's attempt counts under its step
                spec = version.steps[step_name]
                if event.started_at is not None:
                    ran = max(event.finished_at - event.started_at, 0.0)
                    effects.durations.append((run.pipeline, step_name, ran))
                decision = after_attempt(
                    event.status,
                    failures_before=states[attempt.step].attempts_made,
                    retries=spec.retries,
                    run_cancelled=run.status == "cancelled",
                    backoff_base_s=self._retry_backoff_s,
                )
                outputs = {}
                if decision.status == "succeeded":
                    outputs = {
                        name: self._datastores.where(
                            DEFAULT_DATASTORE, output_path(str(run.id), attempt.step, name)
                        )
                        for name in spec.outputs
                    }
                results.append(
                    step_store.StepResult(
                        attempt.step_run_id,
                        decision.status,
                        outputs,
                        [{"name": m.name, "value": m.value, **m.extra} for m in event.metrics],
                        decision.counts_as_failure,
                        decision.retry_in_s,
                        error,
                    )
                )
                statuses[attempt.step] = decision.status
                applied.changed[index] = True
                effects.released.append(attempt.id)
                effects.steps.append(
                    (
                        run.id,
                        attempt.step,
                        decision.status,
                        {"attempt": attempt.number, "agent": attempt.agent_id},
                    )
                )
                if decision.status == "ready":
                    due = time.monotonic() + (decision.retry_in_s or 0.0)
                    effects.ready.append(ReadyStep(attempt.step_run_id, run.id, attempt.step, due=due))
                (log.debug if event.status == "succeeded" else log.info)(
                    "attempt_finished",
                    run_id=str(run.id),
                    step=attempt.step,
                    attempt=attempt.id,
                    agent=attempt.agent_id,
                    outcome=event.status,
                    step_status=decision.status,
                )
            plan, warned = _advance(version, steps, statuses, run.status)
            ids = {step.name: step.id for step in steps}
            warnings |= {ids[name]: text for name, text in warned.items()}
            for name, status in plan.changes.items():
                changes[ids[name]] = status
                run_of_step[ids[name]] = run.id
            if plan.outcome is not None:
                outcomes[run.id] = plan.outcome
            if set({**statuses, **plan.changes}.values()) <= FINAL_STEP:
                effects.finished_runs.append(run.id)
        await step_store.record_step_results(conn, results)
        await step_store.set_warnings(conn, warnings)
        for step in await step_store.set_step_statuses(conn, changes):
            run_id = run_of_step[step.id]
            effects.steps.append((run_id, step.name, step.status, {}))
            if step.status == "ready":
                effects.ready.append(ReadyStep(step.id, run_id, step.name))
            else:
                effects.discarded.append(step.id)
        finished_runs = await run_store.finish_runs(conn, outcomes)
        effects.runs.extend(finished_runs)
        # A run that ended frees a concurrency slot of its pipeline (only limited pipelines are checked).
        limited = sorted(
            {run.pipeline for run in finished_runs if versions[run.id].spec.concurrency is not None}
        )
        for pipeline in limited:
            await self.admit_next(conn, pipeline, None, effects)

    async def fail_step(self, run_id: UUID, name: str, error: str, attempt_id: int | None = None) -> None:
        """A step that can never run fails for good, without a retry: it cannot be rendered (it has no
        attempt), or its attempt ``attempt_id`` can never be delivered (an assignment too large for NATS,
        one agents refuse as malformed)."""
        effects = Effects()
        async with self._pool.acquire() as conn, conn.transaction():
            if attempt_id is not None:
                locked = (await report_store.lock_attempts(conn, {attempt_id})).get(attempt_id)
                if locked is None or locked.status not in ACTIVE_ATTEMPT:
                    return  # it ended meanwhile (a cancel, a lost agent): that end stands
                end = report_store.AttemptEnd(attempt_id, "failed", None, error, None, time.time())
                await report_store.finish_attempts(conn, [end])
                effects.released.append(attempt_id)
            run, steps = await _lock(conn, run_id)
            _, version = await self._contexts.load(conn, run.id, run)
            ids = {step.name: step.id for step in steps}
            if name in ids and await step_store.set_step_statuses(conn, {ids[name]: "failed"}, error=error):
                effects.steps.append((run.id, name, "failed", {}))
                statuses = {step.name: step.status for step in steps} | {name: "failed"}
                await self._settle(conn, run, version, steps, statuses, effects)
        await self.aftermath.apply(effects)  # also when the step had ended: the attempt's capacity is free

    async def _settle(
        self,
        conn: asyncpg.Connection,
        run: run_store.RunRecord,
        version: VersionSpec,
        steps: Sequence[run_store.StepState],
        statuses: Mapping[str, str],
        effects: Effects,
    ) -> None:
        """Applies the state machine to the run (readies, skips, cancels, ends it) inside the transaction."""
        ids = {step.name: step.id for step in steps}
        plan, warned = _advance(version, steps, statuses, run.status)
        await step_store.set_warnings(conn, {ids[name]: text for name, text in warned.items()})
        changed = await step_store.set_step_statuses(
            conn, {ids[name]: status for name, status in plan.changes.items()}
        )
        for step in changed:
            effects.steps.append((run.id, step.name, step.status, {}))
            if step.status == "ready":
                effects.ready.append(ReadyStep(step.id, run.id, step.name))
            else:
                effects.discarded.append(step.id)
        final = {**statuses, **plan.changes}
        if plan.outcome is not None:
            ended = await run_store.finish_run(conn, run.id, plan.outcome)
            if ended is not None:
                effects.runs.append(ended)
                await self.admit_next(conn, run.pipeline, version, effects)
        if set(final.values()) <= FINAL_STEP:
            effects.finished_runs.append(run.id)

    async def admit_next(
        self,
        conn: asyncpg.Connection,
        pipeline: str,
        version: VersionSpec | None,
        effects: Effects,
    ) -> None:
        """Admits held runs of ``pipeline`` as the concurrency rule allows (``admit_held``), handed over
        with ``effects``.

        Only pipelines whose finishing run had a limit are checked here (``version`` None: always); the
        safety sweep admits what a change of limits between versions leaves behind.
        """
        if version is not None and version.spec.concurrency is None:
            return
        for admitted in await admit_held(self._creation, self._contexts.specs.load, conn, pipeline):
            log.info("run_admitted", run_id=str(admitted.run.id), pipeline=pipeline)
            effects.admitted.append(admitted)

    async def admit_held_runs(self) -> None:
        """The safety sweep's admissions: every pipeline with held runs, whatever ended its runs."""
        for pipeline in await run_store.pipelines_holding_runs(self._pool):
            effects = Effects()
            async with self._pool.acquire() as conn, conn.transaction():
                await self.admit_next(conn, pipeline, None, effects)
            await self.aftermath.apply(effects)


def _advance(
    version: VersionSpec, steps: Sequence[run_store.StepState], statuses: Mapping[str, str], run_status: str
) -> tuple[Plan, dict[str, str]]:
    """The state machine on a run, whose steps that fan out follow their partitions; and why those
    that succeed with failed partitions succeed all the same (step -> warning)."""
    partitions = partitions_of([(step.name, step.partition_of) for step in steps], version.fanning)
    allowed = {name: version.steps[name].foreach.allowed_failures for name in partitions}
    plan = advance(statuses, version.graph, run_status=run_status, partitions=partitions, allowed=allowed)
    after = {**statuses, **plan.changes}
    warnings = {
        step: text
        for step, names in partitions.items()
        if plan.changes.get(step) == "succeeded"
        and (text := tolerated_failures({name: after[name] for name in names}, allowed[step])) is not None
    }
    return plan, warnings


def _note_started(
    started: list[report_store.Started],
    events: Sequence[Reported],
    starts: Mapping[tuple[int, str], int],
    effects: Effects,
    applied: Applied,
) -> None:
    for item in started:
        index = starts[(item.attempt_id, item.agent_id)]
        agent_id = item.agent_id
        applied.changed[index] = True
        effects.steps.append((item.run_id, item.step, "running", {"attempt": item.number, "agent": agent_id}))
        if item.run is not None:
            effects.runs.append(item.run)
        if item.run_status == "cancelled":
            # Cancelled while its assignment was in flight: the agent learnt of it too late.
            applied.cancels.append((item.attempt_id, agent_id))


async def _lock(
    conn: asyncpg.Connection, run_id: UUID
) -> tuple[run_store.RunRecord, list[run_store.StepState]]:
    locked = await run_store.lock_run(conn, run_id)
    if locked is None:
        raise LookupError(f"run {run_id} vanished")  # runs are never deleted while they have attempts
    return locked
