"""The registry's view of agent silence (pure, no servers)."""

from __future__ import annotations

from daemon.registry import Registry
from runners.protocol import Capacity, Heartbeat


def beat(agent_id: str) -> Heartbeat:
    return Heartbeat(
        agent_id=agent_id, name=agent_id, executors=["process"], capacity=Capacity(cpu=1, memory=0), sent_at=0
    )


def test_next_silence_is_the_earliest_deadline_of_agents_not_lost() -> None:
    registry = Registry()
    assert registry.next_silence(5.0) is None
    registry.beat(beat("a"), 100.0)
    registry.beat(beat("b"), 102.0)
    assert registry.next_silence(5.0) == 105.0
    assert registry.silent(105.0, 5.0) == []  # silence must exceed the timeout
    assert [agent.id for agent in registry.silent(105.001, 5.0)] == ["a"]
    registry.mark_lost("a")
    assert registry.next_silence(5.0) == 107.0
