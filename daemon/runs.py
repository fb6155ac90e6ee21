"""Manual runs: creating one for a pipeline version (params checked, reuse planned, concurrency
applied, exactly once per idempotency key) and cancelling one.

Reuse is decided as the run is created (``daemon.reuse``): reused steps are inserted final, the steps
they unblock ready; a run whose every step is reused is created ``succeeded``. A held run is
planned again when it is admitted (``daemon.transitions.admit_next``): its data may have changed,
or the outputs it would reuse be gone, by then.

``concurrency.max_active_runs`` counts the pipeline's queued and running runs that are not held. With
``on_limit: queue`` a run beyond the limit is created *held*: queued, every step pending, until a run
of the pipeline ends and frees a slot. With ``on_limit: skip`` no run is created: a 409 Conflict says
why (a trigger records that as a skipped event).
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from daemon.contexts import VersionSpec, run_context
from daemon.dispatcher import Claims, ReadyStep
from daemon.documents.specs import Concurrency
from daemon.engine import Engine
from daemon.errors import Conflict, Invalid, NotFound
from daemon.params import validate_params
from daemon.planner import FINAL_RUN
from daemon.reuse import Decision, all_reused, reused_links, step_plans
from daemon.store import attempts as attempt_store
from daemon.store import new_runs as new_run_store
from daemon.store import runs as run_store
from daemon.store import steps as step_store
from daemon.store.pipelines import get_version
from daemon.transitions import Effects, admit_next, send_cancels

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Created:
    run: run_store.RunRecord
    created: bool  # False: an earlier request with the same idempotency key created it


@dataclass(frozen=True, slots=True)
class Inserted:
    """A run just inserted, to hand over after its transaction commits (:func:`hand_over`)."""

    run: run_store.RunRecord
    steps: list[step_store.NewStep]
    spec: VersionSpec
    held: bool
    reused: dict[str, tuple[str, str]]
    """Reused step -> (run id, step) whose outputs it links."""
    claims: Claims = field(default_factory=Claims)
    """Its steps placed on agents as it was created, whose assignments go out after the commit."""


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

    The version's spec comes from the cache when it is there (versions never change), so the hot path
    reads only what reuse planning needs before the insert; the insert itself checks that the
    version is enabled and, when it was taken as the default, still is. A stale cache costs a
    re-read, never a run of the wrong version.

    Raises:
        NotFound: no such pipeline or version.
        Conflict: the version is disabled, or the pipeline is at its ``max_active_runs`` with
            ``on_limit: skip``.
        Invalid: the params do not match the version's schema (details name ``params.X``).
    """
    options = {
        "reuse": reuse,
        "trigger": trigger,
        "event_id": event_id,
        "idempotency_key": idempotency_key,
        "resolution": resolution or ("manual" if version is not None else "default"),
    }
    async with engine.pool.acquire() as conn:
        if idempotency_key is not None:
            existing = await run_store.find_run_by_key(conn, pipeline, idempotency_key)
            if existing is not None:
                return Created(existing, False)
        inserted = None
        if (cached := engine.specs.cached(pipeline, version)) is not None:
            try:
                inserted = await _insert(
                    engine, conn, cached, params, only_if_default=version is None, **options
                )
            except Invalid:
                if version is not None:  # an explicit version's schema never changes
                    raise
                # The default may have moved to a version with other params: decided below.
        if inserted is None:
            record = await get_version(conn, pipeline, version)
            if record is None:
                if version is not None and await conn.fetchval(
                    "SELECT 1 FROM pipelines WHERE name = $1", pipeline
                ):
                    raise NotFound(f"pipeline {pipeline} has no version {version}")
                raise NotFound(f"pipeline {pipeline} does not exist")
            if version is None:
                engine.specs.seen_default(pipeline, record.version)
            if record.status == "disabled":
                raise disabled(pipeline, record.version)
            inserted = await _insert(
                engine, conn, engine.specs.of(record), params, only_if_default=False, **options
            )
            if inserted is None:
                existing = None
                if idempotency_key is not None:  # a concurrent request with the same key won
                    existing = await run_store.find_run_by_key(conn, pipeline, idempotency_key)
                if existing is None:  # disabled between the read and the insert
                    raise disabled(pipeline, record.version)
                return Created(existing, False)
        # Handed over before the connection goes back to the pool: the hot path.
        await hand_over(engine, inserted)
    log.debug(
        "run_created",
        run_id=str(inserted.run.id),
        pipeline=pipeline,
        version=inserted.run.version,
        held=inserted.held,
        reused=len(inserted.reused),
    )
    return Created(inserted.run, True)


async def _insert(
    engine: Engine,
    conn: asyncpg.Connection,
    spec: VersionSpec,
    params: Mapping[str, Any],
    *,
    only_if_default: bool,
    run_id: UUID | None = None,
    **options: Any,
) -> Inserted | None:
    """Validates ``params`` against ``spec``, plans reuse and inserts the run, held when the pipeline
    is at its concurrency limit (``on_limit: queue``); None when nothing was inserted (see
    :func:`new_run_store.insert_run`).

    Raises:
        Invalid: the params do not match the version's schema.
        Conflict: at the concurrency limit with ``on_limit: skip``.
    """
    pipeline = spec.pipeline
    values = validate_params(
        spec.spec.params,
        params,
        what=f"pipeline {pipeline} version {spec.version}",
        max_bytes=engine.settings.params_max_bytes,
    )
    run_id = run_id or uuid.uuid4()
    decisions = await engine.reuse.plan(conn, spec, values, run_id=run_id, reuse=options["reuse"])
    finished = all_reused(decisions)
    insert = functools.partial(
        new_run_store.insert_run,
        conn,
        pipeline=pipeline,
        version=spec.version,
        params=values,
        only_if_default=only_if_default,
        run_id=run_id,
        finished=finished,
        **options,
    )
    if (limit := spec.spec.concurrency) is None or finished:
        # The insert is one statement, no explicit transaction: the hot path of a manual run.
        return await _insert_claimed(engine, insert, spec, decisions, run_id, values, held=False)
    inserted = None
    try:
        async with conn.transaction():
            # Serialises run creation per limited pipeline: two requests cannot take the last slot.
            default = await conn.fetchval(
                "SELECT default_version FROM pipelines WHERE name = $1 FOR UPDATE", pipeline
            )
            if only_if_default and default != spec.version:
                return None  # the default moved: the caller reads it again
            active = await run_store.count_active_runs(conn, pipeline)
            held = active >= limit.max_active_runs
            if held and limit.on_limit == "skip":
                raise at_limit(pipeline, active, limit)
            inserted = await _insert_claimed(engine, insert, spec, decisions, run_id, values, held=held)
    except BaseException:
        if inserted is not None:  # the commit failed
            engine.dispatcher.unclaim(inserted.claims)
        raise
    return inserted


async def _insert_claimed(
    engine: Engine,
    insert: Callable[..., Awaitable[tuple[run_store.RunRecord, list[step_store.NewStep]] | None]],
    version: VersionSpec,
    decisions: Mapping[str, Decision],
    run_id: UUID,
    params: Mapping[str, Any],
    *,
    held: bool,
) -> Inserted | None:
    """Inserts the run with ``insert``, its ready steps placed on agents already when no step waits
    for one (:func:`claim_ready`)."""
    links = {} if held else reused_links(decisions)
    steps, claims = claim_ready(
        engine, version, run_id, params, step_plans(version, decisions, held=held), links
    )
    try:
        inserted = await insert(steps=steps, held=held)
    except BaseException:
        engine.dispatcher.unclaim(claims)
        raise
    if inserted is None:
        engine.dispatcher.unclaim(claims)
        return None
    return Inserted(*inserted, version, held, links, claims)


def claim_ready(
    engine: Engine,
    version: VersionSpec,
    run_id: UUID,
    params: Mapping[str, Any],
    plans: Mapping[str, new_run_store.StepPlan],
    links: Mapping[str, tuple[str, str]],
) -> tuple[dict[str, new_run_store.StepPlan], Claims]:
    """The steps of a run about to be inserted, those ready placed on agents already when the
    dispatcher has nothing waiting (:meth:`Dispatcher.claim`): the insert records their first
    attempts, and the run starts as it is created — one commit fewer on the way to an agent. The
    caller ends the claims: :func:`hand_over` after the commit, ``Dispatcher.unclaim`` otherwise."""
    ready = [name for name, plan in plans.items() if plan.status == "ready"]
    if not ready:
        return dict(plans), Claims()
    context = run_context(version, run_id, params, links)
    claims = engine.dispatcher.claim(context, version, ready)
    return claims.apply(plans), claims


def disabled(pipeline: str, version: int) -> Conflict:
    """Why no run of a disabled version is created."""
    return Conflict(f"version {version} of {pipeline} is disabled and takes no new runs")


def at_limit(pipeline: str, active: int, limit: Concurrency) -> Conflict:
    """Why no run is created at the concurrency limit with ``on_limit: skip``."""
    return Conflict(
        f"pipeline {pipeline} already has {active} active run{'s' if active != 1 else ''} "
        f"(concurrency.max_active_runs {limit.max_active_runs}, on_limit skip): no run created"
    )


async def hand_over(engine: Engine, inserted: Inserted) -> None:
    """After the commit of a run: the assignments of its claimed steps go out, its creation is
    announced (a run whose every step was reused as succeeded, one placed as it was created as
    running) and its ready steps go to the dispatcher."""
    run = inserted.run
    engine.contexts.put(run, inserted.spec, inserted.reused)
    # Before any await: a claimed step's reservation must become its attempt's, whatever follows.
    engine.dispatcher.claimed(inserted.claims, inserted.steps)
    for name in inserted.reused:
        engine.announcer.step_changed(run.id, name, "reused")
    await engine.announcer.run_changed(run)
    ready = [ReadyStep(step.id, run.id, step.name) for step in inserted.steps if step.status == "ready"]
    if ready:
        engine.dispatcher.add(ready)
    if run.status in FINAL_RUN:
        engine.contexts.drop(run.id)
    if ready or inserted.claims:
        # Lets the dispatcher place and record the steps (or send their assignments) before the
        # caller spends its time on the log line and the response.
        await asyncio.sleep(0)


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
        changed = await step_store.set_step_statuses(
            conn, {step.id: "cancelled" for step in steps if step.status in ("pending", "ready")}
        )
        attempts = await attempt_store.cancellable_attempts(conn, run.id)
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
