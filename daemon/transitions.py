"""Run and step transitions driven by what agents report and by the planner, each in one transaction
whose in-memory effects (capacity released, steps handed to the dispatcher, announcements) follow
only after it committed.

Step events are idempotent: an event for an attempt that is no longer active changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from daemon.contexts import VersionSpec
from daemon.dispatcher import ReadyStep
from daemon.documents.references import DEFAULT_DATASTORE
from daemon.engine import Engine
from daemon.planner import FINAL_STEP, advance, after_attempt, initial_statuses
from daemon.rendering import in_datastore, output_path
from daemon.store import runs as run_store
from runners.protocol import Cancel, CancelReply, StepFinished, StepStarted, cancel_subject

log = structlog.get_logger(__name__)

CANCEL_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Effects:
    """What a committed transition asks of memory and of followers."""

    steps: list[tuple[UUID, str, str, dict[str, Any]]] = field(default_factory=list)
    runs: list[run_store.RunRecord] = field(default_factory=list)
    ready: list[ReadyStep] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)
    finished_runs: list[UUID] = field(default_factory=list)

    async def apply(self, engine: Engine) -> None:
        for attempt_id in self.released:
            engine.registry.release(attempt_id)
        engine.dispatcher.discard(self.discarded)
        for run_id in self.finished_runs:
            engine.contexts.drop(run_id)
        for run_id, name, status, extra in self.steps:
            engine.announcer.step_changed(run_id, name, status, **extra)
        for run in self.runs:
            await engine.announcer.run_changed(run)
        if self.ready or self.released:
            engine.dispatcher.add(self.ready)


async def apply_started(engine: Engine, event: StepStarted) -> bool:
    """attempt → running (and its step and run); False for a duplicate or late event."""
    started = await run_store.start_attempt(engine.pool, event.attempt_id, event.agent_id, event.started_at)
    if started is None:
        return False
    engine.announcer.step_changed(
        started.run_id, started.step, "running", attempt=started.number, agent=event.agent_id
    )
    if started.run is not None:
        await engine.announcer.run_changed(started.run)
    if started.run_status == "cancelled":
        # Cancelled while its assignment was in flight: the agent learnt of it too late.
        await send_cancels(engine, [(event.attempt_id, event.agent_id)], "run cancelled")
    return True


async def apply_finished(engine: Engine, event: StepFinished) -> bool:
    """Ends the attempt, decides the step's fate (succeeded, retry later, failed for good), settles
    the rest of the run and maybe ends it, in one transaction; False for a duplicate or late event."""
    effects = Effects()
    error = event.error
    if error is None and event.status == "failed":
        error = f"exit code {event.exit_code}"
    async with engine.pool.acquire() as conn, conn.transaction():
        finished = await run_store.finish_attempt(
            conn,
            event.attempt_id,
            event.agent_id,
            status=event.status,
            exit_code=event.exit_code,
            error=error,
            started_at=event.started_at,
            finished_at=event.finished_at,
        )
        if finished is None:
            return False
        run, steps = await _lock(conn, finished.run_id)
        _, version = await engine.contexts.load(conn, run.id, run)
        spec = version.steps[finished.step]
        state = next(step for step in steps if step.name == finished.step)
        decision = after_attempt(
            event.status,
            failures_before=state.attempts_made,
            retries=spec.retries,
            run_cancelled=run.status == "cancelled",
            backoff_base_s=engine.settings.retry_backoff_s,
        )
        outputs = {}
        if decision.status == "succeeded":
            outputs = {
                name: in_datastore(
                    engine.datastores.paths, DEFAULT_DATASTORE, output_path(str(run.id), finished.step, name)
                )
                for name in spec.outputs
            }
        await run_store.record_step_result(
            conn,
            finished.step_run_id,
            status=decision.status,
            outputs=outputs,
            metrics=[{"name": m.name, "value": m.value, **m.extra} for m in event.metrics],
            counts_as_failure=decision.counts_as_failure,
            retry_in_s=decision.retry_in_s,
            error=error,
        )
        effects.released.append(event.attempt_id)
        effects.steps.append(
            (run.id, finished.step, decision.status, {"attempt": finished.number, "agent": event.agent_id})
        )
        if decision.status == "ready":
            effects.ready.append(
                ReadyStep(
                    finished.step_run_id,
                    run.id,
                    finished.step,
                    due=time.monotonic() + (decision.retry_in_s or 0.0),
                )
            )
        statuses = {step.name: step.status for step in steps} | {finished.step: decision.status}
        await _settle(engine, conn, run, version, statuses, effects)
    log.info(
        "attempt_finished",
        run_id=str(finished.run_id),
        step=finished.step,
        attempt=event.attempt_id,
        agent=event.agent_id,
        outcome=event.status,
        step_status=decision.status,
    )
    await effects.apply(engine)
    return True


async def fail_step(engine: Engine, run_id: UUID, name: str, error: str) -> None:
    """A ready step that can never run (it cannot be rendered) fails for good, without an attempt."""
    effects = Effects()
    async with engine.pool.acquire() as conn, conn.transaction():
        run, steps = await _lock(conn, run_id)
        _, version = await engine.contexts.load(conn, run.id, run)
        changed = await run_store.set_step_statuses(conn, run.id, {name: "failed"}, error=error)
        if not changed:
            return
        effects.steps.append((run.id, name, "failed", {}))
        statuses = {step.name: step.status for step in steps} | {name: "failed"}
        await _settle(engine, conn, run, version, statuses, effects)
    await effects.apply(engine)


async def _lock(
    conn: asyncpg.Connection, run_id: UUID
) -> tuple[run_store.RunRecord, list[run_store.StepState]]:
    locked = await run_store.lock_run(conn, run_id)
    if locked is None:
        raise LookupError(f"run {run_id} vanished")  # runs are never deleted while they have attempts
    return locked


async def _settle(
    engine: Engine,
    conn: asyncpg.Connection,
    run: run_store.RunRecord,
    version: VersionSpec,
    statuses: Mapping[str, str],
    effects: Effects,
) -> None:
    """Applies the planner to the run (readies, skips, cancels, ends it) inside the transaction."""
    plan = advance(statuses, version.graph, run_status=run.status)
    changed = await run_store.set_step_statuses(conn, run.id, plan.changes)
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
            await admit_next(engine, conn, run.pipeline, version, effects)
    if set(final.values()) <= FINAL_STEP:
        effects.finished_runs.append(run.id)


async def admit_next(
    engine: Engine,
    conn: asyncpg.Connection,
    pipeline: str,
    version: VersionSpec | None,
    effects: Effects,
) -> None:
    """Admits held runs of ``pipeline`` while their version's ``max_active_runs`` allows, oldest first.

    Only pipelines whose finishing run had a limit are checked here (``version`` None: always); the
    safety sweep admits what a change of limits between versions leaves behind.
    """
    if version is not None and version.spec.concurrency is None:
        return
    await conn.execute("SELECT 1 FROM pipelines WHERE name = $1 FOR UPDATE", pipeline)
    while (held := await run_store.oldest_held_run(conn, pipeline)) is not None:
        held_version = await engine.specs.load(conn, held.pipeline, held.version)
        limit = held_version.spec.concurrency
        if limit is not None and await run_store.count_active_runs(conn, pipeline) >= limit.max_active_runs:
            return
        ready = [name for name, status in initial_statuses(held_version.graph).items() if status == "ready"]
        steps = await run_store.admit_run(conn, held.id, ready)
        log.info("run_admitted", run_id=str(held.id), pipeline=pipeline)
        engine.contexts.put(held, held_version)
        for step in steps:
            effects.steps.append((held.id, step.name, step.status, {}))
            effects.ready.append(ReadyStep(step.id, held.id, step.name))


async def send_cancels(engine: Engine, attempts: Sequence[tuple[int, str]], reason: str) -> None:
    """Asks each agent to cancel its attempt (best effort, bounded, all at once); the finish events
    follow."""
    await asyncio.gather(
        *(_send_cancel(engine, attempt_id, agent_id, reason) for attempt_id, agent_id in attempts)
    )


async def _send_cancel(engine: Engine, attempt_id: int, agent_id: str, reason: str) -> None:
    if True:
        try:
            reply = await engine.nc.request(
                cancel_subject(agent_id),
                Cancel(attempt_id=attempt_id, reason=reason).encode(),
                timeout=CANCEL_TIMEOUT_S,
            )
            found = CancelReply.decode(reply.data).found
            log.info("attempt_cancel_sent", attempt=attempt_id, agent=agent_id, found=found)
        except Exception as exc:  # an agent gone or slow is handled by heartbeats; keep cancelling others
            log.warning("attempt_cancel_failed", attempt=attempt_id, agent=agent_id, error=repr(exc))
