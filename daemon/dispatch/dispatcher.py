"""The dispatcher: ready steps → agents, with no polling on the hot path.

Ready steps live in memory (rebuilt from the database at start; a slow sweep re-reads them in case a
hint was missed). Whoever makes a step ready hands it over with :meth:`Dispatcher.add`, which wakes
the loop at once. One pass places every ready step it can *in memory*, the runs taking turns (one run's
many ready steps do not starve the others: :mod:`daemon.rules.turns`) and capacity reserved on the
chosen agent, so passes can never oversubscribe (:mod:`daemon.dispatch.batch_plan`); it records the
whole batch in one transaction (attempt rows, steps → dispatched, first dispatch → run running), then
sends the assignments concurrently (bounded). An assignment that is refused or unanswered marks its
attempt ``lost`` (it does not count as a retry) and the step is ready again, kept off that agent for
a moment.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from uuid import UUID

import asyncpg
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS

from daemon.config import DispatchSettings
from daemon.dispatch.announce import Announcer
from daemon.dispatch.batch_plan import BatchPlanner, Claims, Planned, ReadyStep
from daemon.dispatch.registry import Registry
from daemon.errors import NotFound
from daemon.metrics import DISPATCH_LATENCY
from daemon.planning.contexts import Datastores, RunContexts, VersionSpec
from daemon.rules.placement import Placed, Waiting
from daemon.rules.rendering import RunContext, assignment
from daemon.rules.turns import Turns
from daemon.store import attempts as attempt_store
from daemon.store import steps as step_store
from daemon.store.db import HeldConnection
from kit.tasks import TaskSet
from runners.protocol import AssignReply, assign_subject

log = structlog.get_logger(__name__)

MAX_CONCURRENT_ASSIGNMENTS = 256
REFUSED_AGENT_PAUSE_S = 2.0
"""How long a step stays off an agent that refused it or did not answer."""


def _run_key(step: ReadyStep) -> int:
    """The step's run, as the turn order keys it: every pass hashes every ready step's key, and a
    UUID hashes in Python, its int in C."""
    return step.run_id.int


class Dispatcher:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        nc: NATS,
        registry: Registry,
        contexts: RunContexts,
        datastores: Datastores,
        announcer: Announcer,
        settings: DispatchSettings,
    ) -> None:
        self._pool = pool
        self._nc = nc
        self._registry = registry
        self._contexts = contexts
        self._planner = BatchPlanner(registry, contexts, datastores)
        self._announcer = announcer
        self._settings = settings
        self._ready: dict[int, ReadyStep] = {}
        self._turns: Turns[int] = Turns()
        self._delayed: list[tuple[float, int]] = []
        self._delayed_steps: dict[int, ReadyStep] = {}
        self._in_flight: set[int] = set()
        self._wake = asyncio.Event()
        self._conn = HeldConnection(pool)
        self._sends = TaskSet("assignments")
        self._send_slots = asyncio.Semaphore(MAX_CONCURRENT_ASSIGNMENTS)
        self.assigned = 0  # attempts accepted by agents since start (for benchmarks and metrics)
        self.on_hopeless: Callable[[UUID, str, str, int | None], Awaitable[None]] | None = None
        """Fails a step for good (run id, step, why, its attempt if it has one): it cannot be
        rendered, or its assignment can never be delivered."""

    # --- hand-over ------------------------------------------------------------------------------

    def add(self, steps: Iterable[ReadyStep]) -> None:
        """Steps that are ready in the database (now, or from ``due`` on); wakes the loop."""
        now = time.monotonic()
        for step in steps:
            if step.step_run_id in self._in_flight:
                continue
            if step.due > now:
                self._delayed_steps[step.step_run_id] = step
                heapq.heappush(self._delayed, (step.due, step.step_run_id))
            else:
                self._ready.setdefault(step.step_run_id, step)
        self._wake.set()

    def claim(self, context: RunContext, version: VersionSpec, names: Iterable[str]) -> Claims:
        """Places the steps ``names`` of a run about to be created — those that will be ready — on
        agents now, reserving their capacity, so that the statement creating the run records their
        first attempts too: one commit, no dispatch pass. Only when no step waits for an agent (a
        waiting step goes first: the new run's steps, inserted ready, join the back of the runs'
        turn order); steps that fit nowhere are left out, inserted ready. The caller ends the
        claim: :meth:`claimed` after the commit, :meth:`unclaim` when nothing was written.
        """
        if self._ready or self._delayed_steps:
            return Claims()
        return self._planner.claim(context, version, names, time.monotonic())

    def preview(
        self, context: RunContext, version: VersionSpec, names: Iterable[str]
    ) -> dict[str, Placed | Waiting]:
        """Where the steps ``names`` of a run not written would go now, or why each would wait,
        placed as :meth:`claim` places them but reserving nothing (a plan). Ready steps already
        waiting (``len(self)``) would take free capacity first; the caller says so."""
        return self._planner.preview(context, version, names)

    def claimed(self, claims: Claims, steps: Iterable[step_store.NewStep]) -> None:
        """The run was written with its steps, the claimed ones with their first attempts: the
        assignments go out."""
        written = {step.name: step for step in steps if step.attempt_id is not None}
        for planned in claims.planned:
            step = written.get(planned.step.name)
            if step is None or step.attempt_id is None:
                self._release(planned.key)
                continue
            planned.step.step_run_id = step.id
            self._assign(planned, attempt_store.Dispatched(step.id, step.attempt_id, 1, planned.step.run_id))

    def unclaim(self, claims: Claims) -> None:
        """Nothing was written: the claimed capacity is free again."""
        for planned in claims.planned:
            self._release(planned.key)

    def _release(self, key: int) -> None:
        """Frees a reservation, and wakes the loop: a step may fit now."""
        if self._registry.release(key) is not None:
            self._wake.set()

    def discard(self, step_run_ids: Iterable[int]) -> None:
        """Steps no longer ready (their run was cancelled)."""
        for step_run_id in step_run_ids:
            self._ready.pop(step_run_id, None)
            self._delayed_steps.pop(step_run_id, None)

    def wake(self) -> None:
        """Something may fit now that did not (an agent joined, capacity was freed)."""
        self._wake.set()

    def waiting(self) -> dict[int, str | None]:
        """Ready steps (step run id) and why each waits, as last placed."""
        return {step.step_run_id: step.reason for step in self._ready.values()}

    def waiting_since(self) -> Iterator[float]:
        """For each ready step not placed yet, since when (monotonic) it has been ready."""
        return (step.ready_since for step in self._ready.values())

    def __len__(self) -> int:
        return len(self._ready) + len(self._delayed_steps)

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Places ready steps whenever woken, or when a delayed retry falls due."""
        while True:
            timeout = self._settings.sweep_interval_s
            if self._delayed:
                timeout = min(timeout, max(self._delayed[0][0] - time.monotonic(), 0.0))
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.run_iteration()

    async def run_iteration(self) -> int:
        """One pass: place what fits, record it, send the assignments. Returns the number dispatched."""
        now = time.monotonic()
        self._promote(now)
        if not self._ready:
            return 0
        plan = self._planner.plan(self._turns.order(self._ready.values(), _run_key), now)
        self._turns.served(_run_key(planned.step) for planned in plan.batch)
        for planned in plan.batch:
            del self._ready[planned.step.step_run_id]
            self._in_flight.add(planned.step.step_run_id)
        for step in plan.waiting:
            self._announcer.step_changed(step.run_id, step.name, "ready", waiting_reason=step.reason)
        if plan.more:
            self._wake.set()
        for step, error in plan.broken:
            await self._fail_hopeless(step, error)
        if plan.missing:
            await self._load_contexts(plan.missing)
        if not plan.batch:
            return 0
        return await self._commit(plan.batch)

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, step_run_id = heapq.heappop(self._delayed)
            step = self._delayed_steps.pop(step_run_id, None)
            if step is not None:
                self._ready.setdefault(step_run_id, step)

    async def _commit(self, batch: list[Planned]) -> int:
        items = [attempt_store.Dispatch(planned.step.step_run_id, planned.placement()) for planned in batch]
        try:
            conn = await self._conn.get()
            dispatched, started = await attempt_store.dispatch(conn, items)
        except BaseException:
            # Nothing was recorded (one statement): the steps are still ready in the database.
            for planned in batch:
                self._registry.release(planned.key)
                self._in_flight.discard(planned.step.step_run_id)
                self._ready.setdefault(planned.step.step_run_id, planned.step)
            raise
        by_step = {item.step_run_id: item for item in dispatched}
        for planned in batch:
            step = planned.step
            self._in_flight.discard(step.step_run_id)
            record = by_step.get(step.step_run_id)
            if record is None:  # no longer ready (its run was cancelled, or another pass took it)
                self._registry.release(planned.key)
                continue
            self._assign(planned, record)
        for run in started:
            await self._announcer.run_changed(run)
        return len(dispatched)

    def _assign(self, planned: Planned, record: attempt_store.Dispatched) -> None:
        """After the attempt was recorded: its reservation takes the attempt's id, and the
        assignment goes to the agent."""
        self._registry.rekey(planned.key, record.attempt_id)
        message = assignment(
            planned.context,
            planned.spec,
            planned.rendered,
            planned.datastores,
            attempt_id=record.attempt_id,
            number=record.number,
            gpus=planned.gpus,
            name=planned.step.name,
        )
        self._sends.spawn(self._send(planned, record, message), name=f"assign-{record.attempt_id}")
        self._announcer.step_changed(
            planned.step.run_id,
            planned.step.name,
            "dispatched",
            attempt=record.number,
            agent=planned.agent_id,
        )

    async def _send(self, planned: Planned, record: attempt_store.Dispatched, message) -> None:
        agent_id = planned.agent_id
        timeout = self._settings.assign_timeout_s
        payload = message.encode()
        reason = hopeless = None
        async with self._send_slots:
            try:
                reply = AssignReply.decode(
                    (await self._nc.request(assign_subject(agent_id), payload, timeout=timeout)).data
                )
            except nats.errors.NoRespondersError:
                reason = f"agent {agent_id} is not listening for assignments"
            except (TimeoutError, nats.errors.TimeoutError):
                reason = f"agent {agent_id} did not answer the assignment within {timeout:g} s"
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                reason = f"agent {agent_id} answered the assignment with a bad reply: {exc}"
            except nats.errors.MaxPayloadError:
                hopeless = (
                    f"its assignment is {len(payload)} bytes, more than NATS takes "
                    f"({self._nc.max_payload}): its params or env are too large"
                )
            else:
                if reply.accepted:
                    pass
                elif reply.permanent:
                    hopeless = f"agent {agent_id} refused its assignment: {reply.reason or 'no reason'}"
                else:
                    reason = f"refused by agent {agent_id}: {reply.reason or 'no reason'}"
        # A partition's step run (score[3]) is what is assigned, failed or sent again, not its step.
        fields = {"run_id": planned.context.id, "step": planned.step.name, "attempt": record.attempt_id}
        if hopeless is not None:
            # Sending it again, anywhere, would fail the same way: the step fails now, once.
            log.warning("assignment_hopeless", **fields, reason=hopeless)
            if self.on_hopeless is not None:
                await asyncio.shield(
                    self.on_hopeless(planned.step.run_id, planned.step.name, hopeless, record.attempt_id)
                )
            return
        if reason is None:
            self.assigned += 1
            DISPATCH_LATENCY.observe(time.monotonic() - planned.step.ready_since)
            log.debug("attempt_assigned", **fields, agent=agent_id)
            return
        log.info("assignment_failed", **fields, agent=agent_id, reason=reason)
        await asyncio.shield(self._unassign(planned, record, reason))

    async def _unassign(self, planned: Planned, record: attempt_store.Dispatched, reason: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            requeued = await attempt_store.lose_attempts(conn, {record.attempt_id: reason})
        self._registry.release(record.attempt_id)
        until = time.monotonic() + REFUSED_AGENT_PAUSE_S
        self.requeue(requeued, exclude={planned.agent_id: until})

    def requeue(
        self, requeued: Iterable[attempt_store.Requeued], exclude: dict[str, float] | None = None
    ) -> None:
        """Steps whose attempt was lost: ready again (announced), or cancelled in a cancelled run."""
        ready = []
        for item in requeued:
            self._announcer.step_changed(item.run_id, item.name, item.status)
            if item.status == "ready":
                ready.append(
                    ReadyStep(item.step_run_id, item.run_id, item.name, excluded=dict(exclude or {}))
                )
        self.add(ready)

    async def _fail_hopeless(self, step: ReadyStep, error: str) -> None:
        """A step that cannot be rendered fails for good (retrying would render it the same way)."""
        self._ready.pop(step.step_run_id, None)
        log.warning("step_unrenderable", run_id=str(step.run_id), step=step.name, error=error)
        if self.on_hopeless is not None:
            await self.on_hopeless(step.run_id, step.name, error, None)

    async def _load_contexts(self, run_ids: set[UUID]) -> None:
        for run_id in run_ids:
            try:
                await self._contexts.load(self._pool, run_id)
            except NotFound:
                log.warning("ready_step_without_run", run_id=str(run_id))
                self.discard([s.step_run_id for s in self._ready.values() if s.run_id == run_id])
        self._wake.set()

    # --- the safety sweep -----------------------------------------------------------------------

    async def sweep(self) -> None:
        """Re-reads ready steps from the database (hints may be lost; the database is the truth) and
        stores changed waiting reasons."""
        rows = await step_store.ready_steps(self._pool)
        known = set(self._ready) | set(self._delayed_steps) | self._in_flight
        now_wall, now = time.time(), time.monotonic()
        found = [
            ReadyStep(
                row.step_run_id,
                row.run_id,
                row.name,
                due=now + max((row.ready_at.timestamp() - now_wall) if row.ready_at else 0.0, 0.0),
                reason=row.waiting_reason,
                stored_reason=row.waiting_reason,
            )
            for row in rows
            if row.step_run_id not in known
        ]
        if found:
            log.info("ready_steps_found", count=len(found))
            self.add(found)
        changed = {
            step.step_run_id: step.reason
            for step in self._ready.values()
            if step.reason != step.stored_reason and step.reason is not None
        }
        if changed:
            await step_store.set_waiting_reasons(self._pool, changed)
            for step_run_id, reason in changed.items():
                if (step := self._ready.get(step_run_id)) is not None:
                    step.stored_reason = reason

    async def aclose(self) -> None:
        await self._sends.aclose()
        await self._conn.release()
