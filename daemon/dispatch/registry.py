"""The daemon's live view of agents: what each advertised in its last heartbeat and what the daemon
has reserved on it for active attempts (capacity accounting is the daemon's own, never the agent's
word, so two dispatch passes can never oversubscribe an agent). Pure state; no I/O."""

from __future__ import annotations

import collections
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from daemon.rules.placement import AgentRoom, Need
from runners.protocol import Capacity, Gpu, Heartbeat


@dataclass(frozen=True, slots=True)
class Reservation:
    attempt_id: int
    cpu: float
    memory: int
    gpus: tuple[int, ...]
    since: float  # monotonic


@dataclass(slots=True)
class AgentState:
    id: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    executors: list[str] = field(default_factory=list)
    capacity: Capacity = field(default_factory=lambda: Capacity(cpu=0.0, memory=0))
    datastores: dict[str, str] = field(default_factory=dict)
    staging: str | None = None
    draining: bool = False
    status: str = "ready"  # ready | lost | stopped
    last_seen: float = 0.0  # monotonic; the daemon's start for agents only known from the database
    last_heartbeat: float | None = None  # unix time of the last beat received, None before one
    seen: bool = False  # heard from since the daemon started
    reported: frozenset[int] = frozenset()
    unlisted_since: dict[int, float] = field(default_factory=dict)
    reservations: dict[int, Reservation] = field(default_factory=dict)
    written_at: float = 0.0  # monotonic time of the last database write
    written: tuple = ()
    # Running totals of ``reservations`` (kept by the registry), so free capacity costs O(GPUs).
    used_cpu: float = 0.0
    used_memory: int = 0
    used_gpus: set[int] = field(default_factory=set)

    def hold(self, reservation: Reservation) -> None:
        self.reservations[reservation.attempt_id] = reservation
        self.used_cpu += reservation.cpu
        self.used_memory += reservation.memory
        self.used_gpus.update(reservation.gpus)

    def unhold(self, key: int) -> Reservation | None:
        reservation = self.reservations.pop(key, None)
        if reservation is not None:
            self.used_cpu -= reservation.cpu
            self.used_memory -= reservation.memory
            self.used_gpus.difference_update(reservation.gpus)
            if not self.reservations:  # no float drift once idle
                self.used_cpu, self.used_memory = 0.0, 0
        return reservation

    def free(self) -> tuple[float, int, list[Gpu]]:
        cpu = self.capacity.cpu - self.used_cpu
        memory = self.capacity.memory - self.used_memory
        return cpu, memory, [gpu for gpu in self.capacity.gpus if gpu.index not in self.used_gpus]

    def room(self) -> AgentRoom:
        cpu, memory, gpus = self.free()
        return AgentRoom(
            id=self.id,
            name=self.name,
            labels=self.labels,
            executors=self.executors,
            cpu=self.capacity.cpu,
            memory=self.capacity.memory,
            gpus=self.capacity.gpus,
            free_cpu=cpu,
            free_memory=memory,
            free_gpus=gpus,
            staging=self.staging is not None,
        )

    def offer(self) -> tuple:
        """What decides which steps it can take: when this changes, waiting steps are placed again."""
        return (
            self.accepts_work,
            self.capacity,
            tuple(self.executors),
            tuple(self.labels.items()),
            self.staging is not None,
        )

    @property
    def accepts_work(self) -> bool:
        return self.seen and self.status == "ready" and not self.draining

    def descriptor(self) -> tuple:
        """What is worth writing to the database when it changes."""
        return (
            self.name,
            tuple(sorted(self.labels.items())),
            tuple(self.executors),
            msgspec.json.encode(self.capacity),
            tuple(sorted(self.datastores.items())),
            self.db_status,
        )

    @property
    def db_status(self) -> str:
        if self.status != "ready":
            return self.status
        return "draining" if self.draining else "ready"

    def to_json(self) -> dict[str, Any]:
        """The contract's agent shape."""
        cpu, memory, gpus = self.free()
        last = self.last_heartbeat
        return {
            "id": self.id,
            "name": self.name,
            "labels": self.labels,
            "executors": self.executors,
            "capacity": msgspec.to_builtins(self.capacity),
            "free": {"cpu": cpu, "memory": memory, "gpu": len(gpus), "gpus": [gpu.index for gpu in gpus]},
            "running": sorted(self.reservations),
            "last_heartbeat": None if last is None else _iso(last),
            "status": self.status,
            "draining": self.draining,
            "datastores": self.datastores,
            "staging": self.staging,
        }


def _iso(unix: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(unix, UTC).isoformat()


class Registry:
    """Agents by id, and which agent holds each active attempt."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentState] = {}
        self._holder: dict[int, str] = {}
        self._group_of: dict[int, Hashable] = {}
        self._groups: collections.Counter[Hashable] = collections.Counter()
        """Reservations by group: a foreach step's partitions of one run (its ``max_parallel``)."""
        self._rooms: dict[str, AgentRoom] | None = None
        self.epoch = 0
        """Moves whenever some agent may take a step it could not before (joined, changed what it
        offers, freed capacity): a step that found no agent needs placing again only after it moves."""

    # --- heartbeats ---------------------------------------------------------------------------

    def beat(self, agent_id: str, beat: Heartbeat, now: float) -> tuple[AgentState, bool]:
        """Takes in agent ``agent_id``'s heartbeat; returns the agent and whether it could take work it
        could not before (it is new, came back, stopped draining or changed what it offers)."""
        agent = self.agents.get(agent_id)
        before = None
        if agent is None:
            agent = self.agents[agent_id] = AgentState(id=agent_id, name=agent_id)
        else:
            before = agent.offer()
        agent.labels = dict(beat.labels)
        agent.executors = list(beat.executors)
        agent.capacity = beat.capacity
        agent.datastores = dict(beat.datastores)
        agent.staging = beat.staging
        agent.draining = beat.draining
        agent.status = "ready"
        agent.last_seen = now
        agent.last_heartbeat = time.time()
        agent.seen = True
        agent.reported = frozenset(beat.running)
        after = agent.offer()
        self._rooms = None
        offers_more = agent.accepts_work and after != before
        if offers_more:
            self.epoch += 1
        return agent, offers_more

    def known(self, agent: AgentState) -> None:
        """An agent read from the database at start: known, not yet heard from."""
        self.agents[agent.id] = agent
        self._rooms = None
        self.epoch += 1

    def silent(self, now: float, timeout: float) -> list[AgentState]:
        """Agents not lost yet that have been silent for longer than ``timeout``."""
        return [
            agent
            for agent in self.agents.values()
            if agent.status == "ready" and now - agent.last_seen > timeout
        ]

    def next_silence(self, timeout: float) -> float | None:
        """When (monotonic) the first agent not lost yet will have been silent for ``timeout``, if
        it stays silent; None without such agents."""
        return min(
            (agent.last_seen + timeout for agent in self.agents.values() if agent.status == "ready"),
            default=None,
        )

    def mark_lost(self, agent_id: str) -> None:
        """The agent went silent: it takes no work until it beats again."""
        agent = self.agents.get(agent_id)
        if agent is not None:
            agent.status = "lost"
            self._rooms = None

    def stopped(self, agent_id: str) -> None:
        """The agent said it stopped: no work until it beats again, and it runs nothing any more (what
        it held starts its unlisted clock)."""
        agent = self.agents.get(agent_id)
        if agent is not None:
            agent.status, agent.reported = "stopped", frozenset()
            self._rooms = None

    # --- reservations ---------------------------------------------------------------------------

    def reserve(
        self,
        agent_id: str,
        key: int,
        need: Need,
        gpus: tuple[int, ...],
        now: float,
        group: Hashable | None = None,
    ) -> None:
        agent = self.agents[agent_id]
        agent.hold(Reservation(key, need.cpu, need.memory, gpus, now))
        self._holder[key] = agent_id
        if group is not None:
            self._group_of[key] = group
            self._groups[group] += 1
        if self._rooms is not None:
            self._rooms[agent_id] = agent.room()

    def rekey(self, old: int, new: int) -> None:
        """A tentative reservation (made before the attempt had an id) gets its attempt id."""
        agent_id = self._holder.pop(old, None)
        if agent_id is None:
            return
        agent = self.agents[agent_id]
        reservation = agent.unhold(old)
        if reservation is not None:
            agent.hold(
                Reservation(new, reservation.cpu, reservation.memory, reservation.gpus, reservation.since)
            )
        self._holder[new] = agent_id
        if (group := self._group_of.pop(old, None)) is not None:
            self._group_of[new] = group

    def held_by(self, group: Hashable) -> int:
        """How many reservations ``group`` holds."""
        return self._groups[group]

    def release(self, key: int) -> str | None:
        """Frees what ``key`` held; returns its agent (None when nothing was held)."""
        agent_id = self._holder.pop(key, None)
        if agent_id is None:
            return None
        if (group := self._group_of.pop(key, None)) is not None:
            self._groups[group] -= 1
            if not self._groups[group]:
                del self._groups[group]
        agent = self.agents.get(agent_id)
        if agent is not None:
            agent.unhold(key)
            agent.unlisted_since.pop(key, None)
            if self._rooms is not None and agent_id in self._rooms:
                self._rooms[agent_id] = agent.room()
            self.epoch += 1
        return agent_id

    def holder(self, attempt_id: int) -> str | None:
        return self._holder.get(attempt_id)

    def rooms(self) -> dict[str, AgentRoom]:
        """Free capacity of every agent that takes work, by agent id (cached until something changes)."""
        if self._rooms is None:
            self._rooms = {agent.id: agent.room() for agent in self.agents.values() if agent.accepts_work}
        return self._rooms

    def attempts_of(self, agent_id: str) -> list[int]:
        agent = self.agents.get(agent_id)
        return [] if agent is None else list(agent.reservations)

    def all(self) -> Iterable[AgentState]:
        return self.agents.values()
