"""The one way a run is made, whatever asked for it: trigger events (a batch), a manual run (a batch
of one) or a held run being admitted.

1. facts: the caller brings each run's version and params; reuse is planned for the whole batch at
   once (:meth:`ReusePlanner.plan_many`: fingerprints, earlier outputs, data);
2. rules: :class:`daemon.rules.admission.Slots` decides run, held or skipped, in order, against the
   active runs counted (and their pipelines locked) in the write's transaction; a backfill's run
   that its backfill or its pipeline has no slot for is ``deferred`` (no slot, not written:
   :func:`daemon.rules.backfills.take_slot`); reused partitions are linked for the runs written;
3. capacity: the ready steps of a run that goes ahead are placed on agents already
   (:meth:`Dispatcher.claim`), so the write records their first attempts;
4. one write, the caller's (events with their runs, one run, one admission), in that transaction;
5. after the commit, :meth:`RunCreation.hand_over`: assignments out, the run announced, ready steps
   to the dispatcher.

A run that is not written (the write failed, or left it out) gives its claims back: on failure here,
otherwise by the caller (:meth:`RunCreation.unclaim`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import asyncpg

from daemon.dispatch.announce import Announcer
from daemon.dispatch.dispatcher import Claims, Dispatcher, ReadyStep
from daemon.errors import SluiceError
from daemon.metrics.runs import RunCounts
from daemon.planning.contexts import RunContexts, VersionSpec, run_context
from daemon.planning.reuse_planner import PlanRequest, ReusePlanner, step_plans, with_inputs
from daemon.rules.admission import RUN, Slots, Verdict, counted
from daemon.rules.backfills import Allowance, take_slot
from daemon.rules.partitions import Partition
from daemon.rules.rendering import RunContext
from daemon.rules.reuse import Decision, reused_links
from daemon.rules.states import FINAL_RUN, SUCCESS_STEP
from daemon.store import new_runs as new_run_store
from daemon.store import runs as run_store
from daemon.store import steps as step_store

T = TypeVar("T")


@dataclass(slots=True)
class Draft:
    """A run about to be made: what the caller knows (version, validated params, id), then what
    planning decided (verdict, each step's plan, reused links, claimed placements)."""

    version: VersionSpec
    params: Mapping[str, Any]
    run_id: UUID = field(default_factory=uuid.uuid4)
    reuse: bool = True
    allowance: Allowance | None = None
    """A backfill's run: the slots its backfill has free this turn."""
    decisions: dict[str, Decision] = field(default_factory=dict)
    verdict: Verdict = RUN
    steps: dict[str, new_run_store.StepPlan] = field(default_factory=dict)
    links: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Reused step -> (run id, step) whose outputs it links."""
    claims: Claims = field(default_factory=Claims)
    finished: bool = False
    """Every step is done as the run is made (reused, or fanned out over partitions all reused or
    none at all): the run is over at once, and takes no concurrency slot."""

    @property
    def held(self) -> bool:
        return self.verdict.outcome == "held"

    def context(self) -> RunContext:
        """What its steps' templates see (its reused steps' links and partitions included): how
        they are placed and rendered."""
        return run_context(self.version, self.run_id, self.params, self.links, self.partitions)

    @property
    def partitions(self) -> dict[str, Partition]:
        """Its foreach steps' partitions, by step run name."""
        return {name: decision.partition for name, decision in self.decisions.items() if decision.partition}


@dataclass(frozen=True, slots=True)
class Written:
    """A run the write committed (made, or admitted), to hand over."""

    run: run_store.RunRecord
    steps: list[step_store.NewStep]
    draft: Draft
    admitted: bool = False
    """A held run admitted: its steps changed from pending, and are announced so."""


class RunCreation:
    def __init__(
        self,
        *,
        reuse: ReusePlanner,
        dispatcher: Dispatcher,
        contexts: RunContexts,
        announcer: Announcer,
        counts: RunCounts,
        params_max_bytes: int,
    ) -> None:
        self.specs = contexts.specs
        """The versions' specs, which callers read to validate a run's params."""
        self.params_max_bytes = params_max_bytes
        """The bound on a run's params, which callers apply as they validate them."""
        self.counts = counts
        """Runs created and finished (metrics); the event path tells it each trigger's kind."""
        self._reuse = reuse
        self._dispatcher = dispatcher
        self._contexts = contexts
        self._announcer = announcer

    async def create(
        self,
        conn: asyncpg.Connection,
        drafts: Sequence[Draft],
        write: Callable[[Sequence[Draft]], Awaitable[T]],
        *,
        claim: bool = True,
    ) -> T:
        """Plans ``drafts``, decides each one's verdict and steps, then calls ``write`` with them and
        returns what it returns. The write runs in a transaction that locks the counted pipelines
        (none, and no transaction, when no draft's version has a limit: the hot path); a draft it
        does not write must be :meth:`unclaim`-ed by the caller. ``claim`` False: no step is placed
        ahead (the write records no attempts)."""
        await self._plan_reuse(conn, drafts)
        pipelines = counted((draft.version.pipeline, draft.version.spec.concurrency) for draft in drafts)
        try:
            if not pipelines:
                self._decide(drafts, Slots({}), claim=claim)
                await self._link_reused(drafts)
                return await write(drafts)
            async with conn.transaction():
                slots = Slots(await run_store.lock_active_counts(conn, pipelines))
                self._decide(drafts, slots, claim=claim)
                await self._link_reused(drafts)
                return await write(drafts)
        except BaseException:
            for draft in drafts:
                self.unclaim(draft)
            raise

    async def plan(self, conn: asyncpg.Connection, drafts: Sequence[Draft]) -> None:
        """Decides ``drafts`` as :meth:`create` does — reuse, then the verdicts and step plans — and
        stops before anything is written: no reused outputs linked, no capacity claimed, the active
        runs counted without a lock (a plan is a read; a run made later is decided again)."""
        await self._plan_reuse(conn, drafts)
        pipelines = counted((draft.version.pipeline, draft.version.spec.concurrency) for draft in drafts)
        slots = Slots(await run_store.active_counts(conn, pipelines) if pipelines else {})
        self._decide(drafts, slots, claim=False)

    async def _plan_reuse(self, conn: asyncpg.Connection, drafts: Sequence[Draft]) -> None:
        """Each draft's reuse decisions (or its rejection: a step that cannot fan out)."""
        plans = await self._reuse.plan_many(
            conn, [PlanRequest(draft.version, draft.params, draft.run_id, draft.reuse) for draft in drafts]
        )
        for draft, decisions in zip(drafts, plans, strict=True):
            if isinstance(decisions, SluiceError):
                draft.verdict = Verdict("rejected", decisions)
                continue
            draft.decisions = decisions

    async def _link_reused(self, drafts: Sequence[Draft]) -> None:
        """The reused partitions' outputs linked into the runs about to be written (held or not), before
        anything can start a step downstream of them; none for a run that is not (its id would
        never be a run's). Cheap when none reuses a partition."""
        for draft in drafts:
            if draft.verdict.creates:
                await self._reuse.link_reused(draft.run_id, draft.decisions)

    def _decide(self, drafts: Sequence[Draft], slots: Slots, *, claim: bool) -> None:
        for draft in drafts:
            if draft.verdict.outcome == "rejected":
                continue  # planning found why not (a step that cannot fan out)
            version = draft.version
            plans = step_plans(version, draft.decisions, held=False)
            draft.finished = all(plan.status in SUCCESS_STEP for plan in plans.values())
            draft.verdict = take_slot(
                slots,
                draft.allowance,
                version.pipeline,
                version.spec.concurrency,
                draft.run_id,
                finished=draft.finished,
            )
            draft.links = {}
            if not draft.verdict.creates:
                continue
            if draft.held:
                draft.finished = False
                plans = step_plans(version, draft.decisions, held=True)
            else:
                # What each step reads is recorded with it (a held run's once it is admitted): only
                # for runs that are made, so a deferred or skipped draft renders nothing.
                draft.links = reused_links(draft.decisions)
                run = run_context(version, draft.run_id, draft.params, draft.links, draft.partitions)
                plans = with_inputs(plans, version, draft.decisions, run)
            draft.steps = plans
            if claim:
                self._claim_ready(draft)

    def _claim_ready(self, draft: Draft) -> None:
        """Places the draft's ready steps on agents when the dispatcher has nothing waiting
        (:meth:`Dispatcher.claim`): the write records their first attempts, and the run starts as it
        is made — one commit fewer on the way to an agent."""
        ready = [name for name, plan in draft.steps.items() if plan.status == "ready"]
        if not ready:
            return
        draft.claims = self._dispatcher.claim(draft.context(), draft.version, ready)
        draft.steps = draft.claims.apply(draft.steps)

    def unclaim(self, draft: Draft) -> None:
        """The draft's run was not written: the capacity claimed for it is free again."""
        self._dispatcher.unclaim(draft.claims)
        draft.claims = Claims()

    async def hand_over(self, written: Written) -> None:
        """After the commit of a run: the assignments of its claimed steps go out, the run is
        counted and announced (reused steps too) and its ready steps go to the dispatcher."""
        run, draft = written.run, written.draft
        self._contexts.put(run, draft.version, draft.links, draft.partitions)
        # Before any await: a claimed step's reservation must become its attempt's, whatever follows.
        self._dispatcher.claimed(draft.claims, written.steps)
        if not written.admitted:
            await self.counts.created(run)
        elif run.status in FINAL_RUN:
            await self.counts.finished([run])
        if written.admitted:
            for step in written.steps:
                self._announcer.step_changed(run.id, step.name, step.status)
        else:
            for name in draft.links:
                self._announcer.step_changed(run.id, name, "reused")
        if not written.admitted or run.status in FINAL_RUN:  # admission alone changes no status
            await self._announcer.run_changed(run)
        ready = [ReadyStep(step.id, run.id, step.name) for step in written.steps if step.status == "ready"]
        if ready:
            self._dispatcher.add(ready)
        if run.status in FINAL_RUN:
            self._contexts.drop(run.id)
        if ready or draft.claims:
            # Lets the dispatcher place and record the steps (or send their assignments) before the
            # caller spends its time on the log line and the response.
            await asyncio.sleep(0)


async def admit_held(
    creation: RunCreation,
    load_version: Callable[[asyncpg.Connection, str, int], Awaitable[VersionSpec]],
    conn: asyncpg.Connection,
    pipeline: str,
) -> list[Written]:
    """Admits the held runs of ``pipeline``, oldest first, while the rule gives them a slot, in the
    caller's transaction; each is planned again as it is admitted (its data may have changed, the
    outputs it would reuse be gone). A held run waits without being planned while no slot is free.
    The caller hands the admitted runs over after its commit."""
    admitted: list[Written] = []
    while True:
        # Locks the pipeline first (as every creation of a counted run does): admissions and
        # creations of its runs take turns.
        slots = Slots(await run_store.lock_active_counts(conn, [pipeline]))
        if (held := await run_store.oldest_held_run(conn, pipeline)) is None:
            break
        version = await load_version(conn, held.pipeline, held.version)
        if not slots.free(pipeline, version.spec.concurrency):
            break
        draft = Draft(version, held.params, held.id, held.reuse)

        async def write(drafts: Sequence[Draft], held: run_store.RunRecord = held) -> Written | None:
            [draft] = drafts
            if not draft.verdict.creates or draft.held:
                return None
            steps = await new_run_store.admit_run(conn, held.id, draft.steps)
            run = dataclasses.replace(held, held=False)
            if draft.finished:
                run = await run_store.finish_run(conn, held.id, "succeeded") or run
            return Written(run, steps, draft, admitted=True)

        written = await creation.create(conn, [draft], write, claim=False)
        if written is None:
            break
        admitted.append(written)
    return admitted
