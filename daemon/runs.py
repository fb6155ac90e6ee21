"""Manual runs: creating one for a pipeline version (params checked, concurrency applied, exactly once
per idempotency key) and cancelling one.

``concurrency.max_active_runs`` counts the pipeline's queued and running runs that are not held. With
``on_limit: queue`` a run beyond the limit is created *held*: queued, every step pending, until a run
of the pipeline ends and frees a slot. With ``on_limit: skip`` no run is created: a 409 Conflict says
why (a trigger records that as a skipped event).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import structlog

from daemon.dispatcher import ReadyStep
from daemon.engine import Engine
from daemon.errors import Conflict, NotFound
from daemon.params import validate_params
from daemon.planner import FINAL_RUN, initial_statuses
from daemon.store import runs as run_store
from daemon.store.pipelines import get_version
from daemon.transitions import Effects, admit_next, send_cancels

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Created:
    run: run_store.RunRecord
    created: bool  # False: an earlier request with the same idempotency key created it


async def create_run(
    engine: Engine,
    pipeline: str,
    *,
    params: Mapping[str, Any],
    version: int | None = None,
    reuse: bool = True,
    idempotency_key: str | None = None,
    trigger: str | None = None,
    event_id: int | None = None,
    resolution: str | None = None,
) -> Created:
    """Creates a run of ``pipeline`` (its default version, or ``version``) in one transaction: the run
    (queued) and all its step runs (ready when they wait for nothing, else pending); then hands the
    ready steps to the dispatcher.

    Raises:
        NotFound: no such pipeline or version.
        Conflict: the version is disabled, or the pipeline is at its ``max_active_runs`` with
            ``on_limit: skip``.
        Invalid: the params do not match the version's schema (details name ``params.X``).
    """
    async with engine.pool.acquire() as conn:
        if idempotency_key is not None:
            existing = await run_store.find_run_by_key(conn, pipeline, idempotency_key)
            if existing is not None:
                return Created(existing, False)
        record = await get_version(conn, pipeline, version)
        if record is None:
            if version is not None and await conn.fetchval(
                "SELECT 1 FROM pipelines WHERE name = $1", pipeline
            ):
                raise NotFound(f"pipeline {pipeline} has no version {version}")
            raise NotFound(f"pipeline {pipeline} does not exist")
        if record.status == "disabled":
            raise _disabled(pipeline, record.version)
        spec = engine.specs.of(record)
        values = validate_params(
            spec.spec.params, params, what=f"pipeline {pipeline} version {record.version}"
        )
        options = {
            "pipeline": pipeline,
            "version": record.version,
            "params": values,
            "reuse": reuse,
            "trigger": trigger,
            "event_id": event_id,
            "idempotency_key": idempotency_key,
            "resolution": resolution or ("manual" if version is not None else "default"),
        }
        statuses: dict[str, str] = dict(initial_statuses(spec.graph))
        if (limit := spec.spec.concurrency) is None:
            # One statement, no explicit transaction: the hot path of a manual run.
            inserted = await run_store.insert_run(conn, steps=statuses, **options)
            held = False
        else:
            async with conn.transaction():
                # Serialises run creation per limited pipeline: two requests cannot take the last slot.
                await conn.execute("SELECT 1 FROM pipelines WHERE name = $1 FOR UPDATE", pipeline)
                active = await run_store.count_active_runs(conn, pipeline)
                held = active >= limit.max_active_runs
                if held and limit.on_limit == "skip":
                    raise Conflict(
                        f"pipeline {pipeline} already has {active} active run{'s' if active != 1 else ''} "
                        f"(concurrency.max_active_runs {limit.max_active_runs}, on_limit skip): "
                        "no run created"
                    )
                if held:
                    statuses = dict.fromkeys(statuses, "pending")
                inserted = await run_store.insert_run(conn, steps=statuses, held=held, **options)
        if inserted is None:
            existing = None
            if idempotency_key is not None:  # a concurrent request with the same key won
                existing = await run_store.find_run_by_key(conn, pipeline, idempotency_key)
            if existing is None:  # disabled between the read and the insert
                raise _disabled(pipeline, record.version)
            return Created(existing, False)
        # Handed over before the connection goes back to the pool (a round trip): the hot path.
        run, steps = inserted
        engine.contexts.put(run, spec)
        engine.dispatcher.add(
            ReadyStep(step.id, run.id, step.name) for step in steps if step.status == "ready"
        )
    log.info("run_created", run_id=str(run.id), pipeline=pipeline, version=run.version, held=held)
    await engine.announcer.run_changed(run)
    return Created(run, True)


def _disabled(pipeline: str, version: int) -> Conflict:
    return Conflict(f"version {version} of {pipeline} is disabled and takes no new runs")


async def cancel_run(
    engine: Engine, run_id: UUID, reason: str = "cancelled by request"
) -> run_store.RunRecord:
    """Cancels the run: it ends ``cancelled`` at once, steps not started are cancelled, and agents are
    asked to stop its running attempts (whose finish events then mark their steps cancelled).
    Cancelling a cancelled run changes nothing.

    Raises:
        NotFound: no such run.
        Conflict: the run already succeeded or failed.
    """
    effects = Effects()
    async with engine.pool.acquire() as conn, conn.transaction():
        locked = await run_store.lock_run(conn, run_id)
        if locked is None:
            raise NotFound(f"run {run_id} does not exist")
        run, steps = locked
        if run.status in FINAL_RUN:
            if run.status == "cancelled":
                return run
            raise Conflict(
                f"run {run_id} already {run.status}; only a queued or running run can be cancelled"
            )
        ended = await run_store.finish_run(conn, run.id, "cancelled", reason)
        assert ended is not None
        changed = await run_store.set_step_statuses(
            conn, run.id, {step.name: "cancelled" for step in steps if step.status in ("pending", "ready")}
        )
        attempts = await run_store.cancellable_attempts(conn, run.id)
        if not run.held:
            version = await engine.specs.load(conn, run.pipeline, run.version)
            await admit_next(engine, conn, run.pipeline, version, effects)
    effects.runs.insert(0, ended)
    for step in changed:
        effects.steps.append((run.id, step.name, step.status, {}))
        effects.discarded.append(step.id)
    if not attempts:
        effects.finished_runs.append(run.id)
    log.info("run_cancelled", run_id=str(run.id), attempts=len(attempts))
    await effects.apply(engine)
    await send_cancels(engine, attempts, reason)
    return ended
