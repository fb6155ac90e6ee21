"""Where a ready step runs: pure placement over the agents' free capacity as the daemon accounts it.

Rules: the step's selector labels must match the agent's; the agent must have the executor
(``docker`` for a step with an image); a step that uses an ``s3`` datastore needs an agent with a
staging directory for its files; the step must fit the agent's *free* capacity (capacity minus
what the daemon has reserved for its active attempts: never oversubscribed); a GPU step needs that
many free GPUs, each with at least ``gpu_memory`` when given, and gets specific indices; a CPU-only
step prefers agents without GPUs; among the rest, best fit (least capacity left over). A step that fits
nowhere gets a reason; one bigger than every eligible agent's *total* capacity is flagged as such
(it still waits: bigger agents may join).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from runners.protocol import Gpu

EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Need:
    """What a step asks of an agent. ``memory`` 0 = unspecified (fits anywhere)."""

    cpu: float
    memory: int
    gpu: int = 0
    gpu_memory: int | None = None
    selector: Mapping[str, str] = field(default_factory=dict)
    executor: str = "process"
    staging: bool = False
    """It uses an ``s3`` datastore, whose files an agent stages in its staging directory."""

    @property
    def shape(self) -> tuple:
        """Steps with the same shape place alike: one failure to place speaks for all of them."""
        return (
            self.cpu,
            self.memory,
            self.gpu,
            self.gpu_memory,
            tuple(sorted(self.selector.items())),
            self.executor,
            self.staging,
        )


@dataclass(frozen=True, slots=True)
class AgentRoom:
    """One live agent that may take work: what it has, and what is free of it now."""

    id: str
    name: str
    labels: Mapping[str, str]
    executors: Sequence[str]
    cpu: float
    memory: int
    gpus: Sequence[Gpu]
    free_cpu: float
    free_memory: int
    free_gpus: Sequence[Gpu]
    staging: bool = False
    """It announced a staging directory (``Heartbeat.staging``), so it can take steps that use an
    ``s3`` datastore."""


@dataclass(frozen=True, slots=True)
class Placed:
    agent_id: str
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Waiting:
    """No agent can take the step now. ``never_fits``: it is bigger than every eligible agent."""

    reason: str
    never_fits: bool = False


def place(need: Need, agents: Iterable[AgentRoom]) -> Placed | Waiting:
    """The best agent for ``need`` with the GPU indices to reserve, or why there is none."""
    agents = list(agents)
    if not agents:
        return Waiting("no agent is connected")
    eligible = [agent for agent in agents if _labels_match(need.selector, agent.labels)]
    if not eligible:
        wanted = ",".join(f"{key}={value}" for key, value in sorted(need.selector.items()))
        return Waiting(f"no agent has labels {wanted}")
    eligible = [agent for agent in eligible if need.executor in agent.executors]
    if not eligible:
        return Waiting(f"no matching agent has the {need.executor} executor")
    if need.staging:
        eligible = [agent for agent in eligible if agent.staging]
        if not eligible:
            return Waiting("it uses an s3 datastore: no matching agent has a staging directory for one")
    if (reason := _never_fits(need, eligible)) is not None:
        return Waiting(reason, never_fits=True)
    best: tuple[tuple, AgentRoom, tuple[int, ...]] | None = None
    for agent in eligible:
        if agent.free_cpu + EPSILON < need.cpu or agent.free_memory < need.memory:
            continue
        gpus = _pick_gpus(need, agent.free_gpus)
        if gpus is None:
            continue
        key = _fit_key(need, agent)
        if best is None or key < best[0]:
            best = (key, agent, gpus)
    if best is None:
        return Waiting(_no_room(need, eligible))
    return Placed(best[1].id, best[2])


def taken(room: AgentRoom, need: Need, gpus: Sequence[int]) -> AgentRoom:
    """``room`` once ``need`` is placed on it with ``gpus``: how a plan sees the next step's room
    without reserving anything (the dispatcher's registry reserves for real)."""
    return replace(
        room,
        free_cpu=room.free_cpu - need.cpu,
        free_memory=room.free_memory - need.memory,
        free_gpus=[gpu for gpu in room.free_gpus if gpu.index not in gpus],
    )


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _usable(gpus: Sequence[Gpu], gpu_memory: int | None) -> list[Gpu]:
    return [gpu for gpu in gpus if gpu_memory is None or gpu.memory >= gpu_memory]


def _pick_gpus(need: Need, free: Sequence[Gpu]) -> tuple[int, ...] | None:
    """The indices to reserve (smallest adequate GPUs first: big ones stay for big steps), or None."""
    if need.gpu == 0:
        return ()
    usable = sorted(_usable(free, need.gpu_memory), key=lambda gpu: (gpu.memory, gpu.index))
    if len(usable) < need.gpu:
        return None
    return tuple(sorted(gpu.index for gpu in usable[: need.gpu]))


def _fit_key(need: Need, agent: AgentRoom) -> tuple:
    """Smaller is better: GPU-less agents first for CPU steps, fewest GPUs left for GPU steps, then the
    least CPU and memory left over (as fractions of the agent), then the name for a stable choice."""
    left_cpu = (agent.free_cpu - need.cpu) / agent.cpu if agent.cpu > 0 else 0.0
    left_memory = (agent.free_memory - need.memory) / agent.memory if agent.memory > 0 else 0.0
    if need.gpu == 0:
        first: float = 1 if agent.gpus else 0
    else:
        first = len(agent.free_gpus) - need.gpu
    return (first, left_cpu + left_memory, agent.name, agent.id)


def _never_fits(need: Need, agents: Sequence[AgentRoom]) -> str | None:
    """Why no eligible agent could ever take ``need``, even empty; None when one could."""
    if any(_fits_total(need, agent) for agent in agents):
        return None
    if need.gpu:
        most = max(len(_usable(agent.gpus, need.gpu_memory)) for agent in agents)
        if most < need.gpu:
            if need.gpu_memory is None:
                return f"needs {_gpus(need.gpu)}; no agent has more than {most}"
            return (
                f"needs {_gpus(need.gpu)} with {format_size(need.gpu_memory)} memory each; "
                f"no agent has more than {most} such GPU{'s' if most != 1 else ''}"
            )
    most_cpu = max(agent.cpu for agent in agents)
    if most_cpu + EPSILON < need.cpu:
        return f"needs {format_cpu(need.cpu)} CPUs; no agent has more than {format_cpu(most_cpu)}"
    most_memory = max(agent.memory for agent in agents)
    if most_memory < need.memory:
        return f"needs {format_size(need.memory)} memory; no agent has more than {format_size(most_memory)}"
    return "no single agent has all of its CPU, memory and GPUs"


def _fits_total(need: Need, agent: AgentRoom) -> bool:
    return (
        agent.cpu + EPSILON >= need.cpu
        and agent.memory >= need.memory
        and len(_usable(agent.gpus, need.gpu_memory)) >= need.gpu
    )


def _no_room(need: Need, agents: Sequence[AgentRoom]) -> str:
    """Which resource is short now, naming the agent that has the most of it."""
    if need.gpu:
        counts = [(len(_usable(agent.free_gpus, need.gpu_memory)), agent.name) for agent in agents]
        most, name = max(counts)
        if most < need.gpu:
            such = "" if need.gpu_memory is None else f" with {format_size(need.gpu_memory)}"
            plural = "s" if need.gpu != 1 else ""
            return f"no agent has {need.gpu} free GPU{plural}{such} (largest: {name} with {most})"
    most_cpu, name = max((agent.free_cpu, agent.name) for agent in agents)
    if most_cpu + EPSILON < need.cpu:
        return f"no agent has {format_cpu(need.cpu)} free CPUs (most: {name} with {format_cpu(most_cpu)})"
    most_memory, name = max((agent.free_memory, agent.name) for agent in agents)
    if most_memory < need.memory:
        return (
            f"no agent has {format_size(need.memory)} free memory "
            f"(most: {name} with {format_size(most_memory)})"
        )
    return "no agent has its CPU, memory and GPUs free at once"


def _gpus(count: int) -> str:
    return f"{count} GPU{'s' if count != 1 else ''}"


def format_cpu(cores: float) -> str:
    return f"{cores:g}"


def format_size(size: int) -> str:
    """Bytes as people write them in documents: ``16Gi``, ``512Mi``, ``1.5Gi``."""
    for unit, scale in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if size >= scale:
            value = size / scale
            return f"{value:g}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{size}B"
