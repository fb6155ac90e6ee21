"""Placing a pass's ready steps in memory, before anything is written: each step is placed on an agent
(:func:`daemon.rules.placement.place`), rendered for that agent and its capacity reserved in the
registry, so that passes can never oversubscribe an agent. Steps that fit nowhere keep the reason;
steps that cannot be rendered are reported broken. The dispatcher records and sends what was placed.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from uuid import UUID

import msgspec

from daemon.dispatch.registry import AgentState, Registry
from daemon.documents.specs import StepSpec
from daemon.documents.template import TemplateError
from daemon.planning.contexts import Datastores, RunContexts, VersionSpec
from daemon.rules.partitions import step_of
from daemon.rules.placement import AgentRoom, Need, Placed, Waiting, place, taken
from daemon.rules.rendering import RenderedStep, RunContext, render_step
from daemon.store import attempts as attempt_store
from daemon.store import new_runs as new_run_store

MAX_BATCH = 512


def need_of(step: StepSpec, datastores: Datastores) -> Need:
    resources = step.resources
    return Need(
        cpu=resources.cpu,
        memory=resources.memory,
        gpu=resources.gpu,
        gpu_memory=resources.gpu_memory,
        selector=step.selector,
        executor="docker" if step.image else "process",
        staging=datastores.needs_staging(step),
    )


@dataclass(slots=True)
class ReadyStep:
    """A step waiting for an agent. ``due`` (monotonic) delays a retry; ``excluded`` keeps the step
    off agents (id -> until, monotonic) that just refused it; ``known`` (monotonic) is when the
    daemon learnt it was ready (its wait, and its dispatch latency, start at ``known`` or ``due``,
    whichever is later)."""

    step_run_id: int
    run_id: UUID
    name: str
    due: float = 0.0
    known: float = field(default_factory=time.monotonic)
    excluded: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    stored_reason: str | None = None
    need: Need | None = None
    waited_at: int | None = None
    """The registry's epoch when no agent could take the step (None: not placed yet)."""

    @property
    def ready_since(self) -> float:
        """Since when (monotonic) the step has been ready for an agent."""
        return max(self.known, self.due)


@dataclass(frozen=True, slots=True)
class Planned:
    """A step placed on an agent and rendered for it, its capacity reserved there."""

    step: ReadyStep
    context: RunContext
    spec: StepSpec
    agent_id: str
    gpus: tuple[int, ...]
    rendered: RenderedStep
    datastores: dict[str, str]
    key: int
    """What holds its capacity in the registry until its attempt has an id."""

    def placement(self) -> attempt_store.Placement:
        return attempt_store.Placement(self.agent_id, msgspec.to_builtins(self.spec.resources), self.gpus)


@dataclass(frozen=True, slots=True)
class Claims:
    """Steps of a run about to be created, placed on agents before it is written (see
    :meth:`daemon.dispatch.dispatcher.Dispatcher.claim`): the statement that creates the run records
    their first attempts."""

    planned: list[Planned] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.planned)

    def apply(self, plans: Mapping[str, new_run_store.StepPlan]) -> dict[str, new_run_store.StepPlan]:
        """``plans`` with the claimed steps ``dispatched``, each with the agent it is placed on."""
        placed = {planned.step.name: planned for planned in self.planned}
        return {
            name: plan
            if (planned := placed.get(name)) is None
            else replace(plan, status="dispatched", placement=planned.placement())
            for name, plan in plans.items()
        }


@dataclass(slots=True)
class BatchPlan:
    """What one pass placed, and what it could not: ``missing`` runs whose context must be loaded
    first, ``broken`` steps that can never be placed (with why), ``waiting`` steps whose reason to
    wait changed, and ``more`` when the batch was full before every ready step was looked at."""

    batch: list[Planned] = field(default_factory=list)
    missing: set[UUID] = field(default_factory=set)
    broken: list[tuple[ReadyStep, str]] = field(default_factory=list)
    waiting: list[ReadyStep] = field(default_factory=list)
    more: bool = False


_CLAIM_KEYS = itertools.count(-(2**62), -1)
"""Registry keys of claimed steps, which have no id yet: far below any step run id's negation."""


class BatchPlanner:
    def __init__(self, registry: Registry, contexts: RunContexts, datastores: Datastores) -> None:
        self._registry = registry
        self._contexts = contexts
        self._datastores = datastores

    def plan(self, ready: Iterable[ReadyStep], now: float) -> BatchPlan:
        """Places ``ready`` steps in memory, in the order given (the dispatcher's turn order: a step
        earlier in it takes free capacity first), reserving capacity for each one placed."""
        rooms = dict(self._registry.rooms())
        epoch = self._registry.epoch
        result = BatchPlan()
        failed_shapes: dict[tuple, Waiting] = {}
        for step in ready:
            if step.waited_at == epoch and not step.excluded:
                continue  # no agent can take more than when this step last found none
            if len(result.batch) >= MAX_BATCH:
                result.more = True  # the rest in the next pass, after this batch is recorded
                break
            entry = self._contexts.get(step.run_id)
            if entry is None:
                result.missing.add(step.run_id)
                continue
            context, version = entry
            spec = version.steps.get(step_of(step.name))
            if spec is None:
                result.broken.append((step, f"step {step.name} is not in version {version.version}"))
                continue
            if (bound := _parallel_bound(step, spec)) is not None and self._registry.held_by(
                bound[0]
            ) >= bound[1]:
                _wait(step, _parallel_reason(spec, bound[1]), result)
                continue
            need = step.need or need_of(spec, self._datastores)
            step.need = need
            excluded = {agent for agent, until in step.excluded.items() if until > now}
            if not excluded and (known := failed_shapes.get(need.shape)) is not None:
                step.waited_at = epoch
                _wait(step, known.reason, result)
                continue
            candidates = (
                rooms.values() if not excluded else [r for r in rooms.values() if r.id not in excluded]
            )
            placed = place(need, candidates)
            if isinstance(placed, Waiting):
                if not excluded:
                    failed_shapes[need.shape] = placed
                    step.waited_at = epoch
                _wait(step, placed.reason, result)
                continue
            planned = self._take(step, context, spec, placed, rooms, now, result.broken)
            if planned is not None:
                result.batch.append(planned)
        return result

    def claim(self, context: RunContext, version: VersionSpec, names: Iterable[str], now: float) -> Claims:
        """Places the steps ``names`` of a run not written yet, reserving their capacity; steps that
        fit nowhere, or cannot be rendered where they fit, are left out."""
        claims = Claims()
        rooms = dict(self._registry.rooms())
        for step, spec, placed in self._place_new(context, version, names, rooms, self._registry.held_by):
            if isinstance(placed, Waiting):
                continue  # inserted ready: it waits for a turn like any other
            planned = self._take(step, context, spec, placed, rooms, now, [])
            if planned is None:
                continue  # the dispatcher fails the step, with the reason, once it is ready
            claims.planned.append(planned)
        return claims

    def preview(
        self, context: RunContext, version: VersionSpec, names: Iterable[str]
    ) -> dict[str, Placed | Waiting]:
        """Where the steps ``names`` of a run not written yet would go now, or why each would wait,
        as :meth:`claim` places them, reserving nothing: each placement only narrows this pass's own
        copy of the agents' rooms (:func:`taken`). A step that could not be rendered for its agent
        waits with that reason (the dispatcher would fail it)."""
        rooms = dict(self._registry.rooms())
        groups: collections.Counter[Hashable] = collections.Counter()

        def held_by(group: Hashable) -> int:
            return self._registry.held_by(group) + groups[group]

        found: dict[str, Placed | Waiting] = {}
        for step, spec, placed in self._place_new(context, version, names, rooms, held_by):
            if isinstance(placed, Placed):
                agent = self._registry.agents[placed.agent_id]
                if isinstance(rendered := self._render(step, context, spec, agent), str):
                    placed = Waiting(rendered)
                else:
                    assert step.need is not None  # _place_new gives every step its need
                    rooms[placed.agent_id] = taken(rooms[placed.agent_id], step.need, placed.gpus)
                    if (bound := _parallel_bound(step, spec)) is not None:
                        groups[bound[0]] += 1
            found[step.name] = placed
        return found

    def _place_new(
        self,
        context: RunContext,
        version: VersionSpec,
        names: Iterable[str],
        rooms: dict[str, AgentRoom],
        held_by: Callable[[Hashable], int],
    ) -> Iterator[tuple[ReadyStep, StepSpec, Placed | Waiting]]:
        """Each step of a new run placed over ``rooms`` as they are when it is its turn (the caller
        narrows them after each placement): what :meth:`claim` and :meth:`preview` share."""
        for name in names:
            spec = version.steps[step_of(name)]
            step = ReadyStep(0, UUID(context.id), name, need=need_of(spec, self._datastores))
            if (bound := _parallel_bound(step, spec)) is not None and held_by(bound[0]) >= bound[1]:
                yield step, spec, Waiting(_parallel_reason(spec, bound[1]))
                continue
            yield step, spec, place(step.need, rooms.values())

    def _render(
        self, step: ReadyStep, context: RunContext, spec: StepSpec, agent: AgentState
    ) -> tuple[RenderedStep, dict[str, str]] | str:
        """The step rendered for ``agent`` with the datastores as it sees them, or why it cannot be."""
        datastores = self._datastores.for_agent(agent.datastores, agent.staging, f"{context.id}/{step.name}")
        try:
            rendered = render_step(
                context, spec, datastores, context.partitions.get(step.name), self._datastores.stores
            )
            return rendered, datastores
        except TemplateError as exc:
            return f"cannot render step {step.name} for agent {agent.name}: {exc.message}"

    def _take(
        self,
        step: ReadyStep,
        context: RunContext,
        spec: StepSpec,
        placed: Placed,
        rooms: dict[str, AgentRoom],
        now: float,
        broken: list[tuple[ReadyStep, str]],
    ) -> Planned | None:
        """Renders ``step`` for the agent it was placed on and reserves that capacity (``rooms``
        follows); None, with the reason in ``broken``, when it cannot be rendered there."""
        assert step.need is not None
        agent = self._registry.agents[placed.agent_id]
        if isinstance(done := self._render(step, context, spec, agent), str):
            broken.append((step, done))
            return None
        rendered, datastores = done
        key = -step.step_run_id if step.step_run_id else next(_CLAIM_KEYS)
        bound = _parallel_bound(step, spec)
        self._registry.reserve(
            placed.agent_id, key, step.need, placed.gpus, now, None if bound is None else bound[0]
        )
        rooms[placed.agent_id] = agent.room()
        return Planned(step, context, spec, placed.agent_id, placed.gpus, rendered, datastores, key)


def _parallel_bound(step: ReadyStep, spec: StepSpec) -> tuple[tuple[UUID, str], int] | None:
    """A partition of a step with ``max_parallel``: its group (run, step) and the bound."""
    if step.name == spec.name or spec.foreach is None or spec.foreach.max_parallel is None:
        return None
    return (step.run_id, spec.name), spec.foreach.max_parallel


def _parallel_reason(spec: StepSpec, bound: int) -> str:
    return f"max_parallel {bound}: as many partitions of {spec.name} are running"


def _wait(step: ReadyStep, reason: str, result: BatchPlan) -> None:
    if step.reason != reason:
        step.reason = reason
        result.waiting.append(step)
