"""What the scheduler holds in memory, read at scrape time: ready steps waiting for capacity, agents by
state, each agent's capacity (total and free, as the daemon accounts it) and the JetStream messages
each ``nats`` trigger has pending. Nothing is updated on the hot path for these; a scrape walks the
ready steps and the agents once.

A process without a scheduler (or whose scheduler stopped) exports these series with no sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon.dispatch.registry import AgentState

AGENT_STATES = ("ready", "draining", "lost", "stopped")


class Exported(Protocol):
    """What the collector reads from a scheduler (``daemon.runtime.scheduler.Scheduler``)."""

    def waiting_since(self) -> Iterable[float]:
        """For each ready step waiting for an agent, since when (monotonic)."""

    def agent_states(self) -> Iterable[AgentState]: ...

    def jetstream_pending(self) -> Mapping[str, int]:
        """Messages pending per JetStream ``nats`` trigger, as last seen (empty unless leading)."""


def waiting(since: Iterable[float], now: float) -> tuple[int, float]:
    """How many steps wait, and the age in seconds of the oldest (0 when none)."""
    count, oldest = 0, now
    for moment in since:
        count += 1
        oldest = min(oldest, moment)
    return count, max(now - oldest, 0.0)


def agents_by_state(agents: Iterable[AgentState]) -> dict[str, int]:
    """Agents counted by state (ready, draining, lost, stopped), every state present."""
    counts = dict.fromkeys(AGENT_STATES, 0)
    for agent in agents:
        state = agent.db_status
        counts[state] = counts.get(state, 0) + 1
    return counts


class SchedulerCollector(Collector):
    """Exports the watched scheduler's memory at each scrape (the latest one watched, should a
    process hold several, as tests do)."""

    def __init__(self) -> None:
        self._watched: list[Exported] = []

    def watch(self, scheduler: Exported) -> Callable[[], None]:
        """Exports ``scheduler`` from now on; returns what stops it."""
        self._watched.append(scheduler)
        return lambda: self._watched.remove(scheduler)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(_families().values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = _families()
        if not self._watched:
            return iter(families.values())
        scheduler = self._watched[-1]
        count, oldest = waiting(scheduler.waiting_since(), time.monotonic())
        families["waiting"].add_metric([], count)
        families["oldest"].add_metric([], oldest)
        agents = list(scheduler.agent_states())
        for state, number in agents_by_state(agents).items():
            families["agents"].add_metric([state], number)
        for agent in agents:
            if agent.status != "ready":  # a lost or stopped agent offers nothing
                continue
            cpu, memory, gpus = agent.free()
            capacity = agent.capacity
            for name, value in (
                ("cpu", capacity.cpu),
                ("free_cpu", cpu),
                ("memory", capacity.memory),
                ("free_memory", memory),
                ("gpus", len(capacity.gpus)),
                ("free_gpus", len(gpus)),
            ):
                families[name].add_metric([agent.id], value)
        for trigger, pending in scheduler.jetstream_pending().items():
            families["pending"].add_metric([trigger], pending)
        return iter(families.values())


def _families() -> dict[str, GaugeMetricFamily]:
    def agent(name: str, text: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=["agent"])

    return {
        "waiting": GaugeMetricFamily(
            "sluice_steps_waiting",
            "Ready steps waiting for an agent with room for them (this daemon's dispatcher)",
        ),
        "oldest": GaugeMetricFamily(
            "sluice_steps_waiting_oldest_age_seconds",
            "How long the step that has waited longest for an agent has waited (0 when none waits)",
        ),
        "agents": GaugeMetricFamily(
            "sluice_agents",
            "Agents known to the daemon by state (ready, draining, lost, stopped)",
            labels=["state"],
        ),
        "cpu": agent("sluice_agent_cpu_cores", "CPU cores an agent offers (agents ready or draining)"),
        "free_cpu": agent("sluice_agent_free_cpu_cores", "CPU cores of an agent not reserved"),
        "memory": agent("sluice_agent_memory_bytes", "Memory an agent offers"),
        "free_memory": agent("sluice_agent_free_memory_bytes", "Memory of an agent not reserved"),
        "gpus": agent("sluice_agent_gpus", "GPUs an agent offers"),
        "free_gpus": agent("sluice_agent_free_gpus", "GPUs of an agent not reserved"),
        "pending": GaugeMetricFamily(
            "sluice_trigger_jetstream_pending_messages",
            "Messages of a JetStream nats trigger's stream not yet delivered to it, as of its last "
            "delivery (leader only)",
            labels=["trigger"],
        ),
    }
