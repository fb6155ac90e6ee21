"""The registry's view of agent silence and capacity changes (pure, no servers)."""

from __future__ import annotations

import msgspec

from daemon.dispatch.registry import Registry
from daemon.rules.placement import Need
from runners.protocol import Capacity, Heartbeat


def beat(agent_id: str, cpu: float = 1) -> tuple[str, Heartbeat]:
    """Agent ``agent_id``'s heartbeat, with the name its subject carries."""
    return agent_id, Heartbeat(executors=["process"], capacity=Capacity(cpu=cpu, memory=0), sent_at=0)


def test_next_silence_is_the_earliest_deadline_of_agents_not_lost() -> None:
    registry = Registry()
    assert registry.next_silence(5.0) is None
    registry.beat(*beat("a"), 100.0)
    registry.beat(*beat("b"), 102.0)
    assert registry.next_silence(5.0) == 105.0
    assert registry.silent(105.0, 5.0) == []  # silence must exceed the timeout
    assert [agent.id for agent in registry.silent(105.001, 5.0)] == ["a"]
    registry.mark_lost("a")
    assert registry.next_silence(5.0) == 107.0


def test_the_epoch_moves_only_when_an_agent_may_take_more() -> None:
    """Waiting steps are placed again only after the epoch moves: it must move on every gain."""
    registry = Registry()
    start = registry.epoch
    registry.beat(*beat("a"), 100.0)
    joined = registry.epoch
    assert joined > start
    registry.beat(*beat("a"), 101.0)  # the same offer again
    assert registry.epoch == joined
    registry.reserve("a", 7, Need(cpu=1.0, memory=0), (), 101.0)
    assert registry.epoch == joined  # taking capacity helps no waiting step
    assert registry.release(7) == "a"
    assert registry.epoch > joined
    freed = registry.epoch
    registry.beat(*beat("a", cpu=4), 102.0)
    assert registry.epoch > freed


def test_an_agent_that_announces_staging_offers_more_and_its_room_says_so() -> None:
    registry = Registry()
    agent_id, plain = beat("a")
    registry.beat(agent_id, plain, 100.0)
    assert not registry.rooms()["a"].staging

    agent, offers_more = registry.beat(agent_id, msgspec.structs.replace(plain, staging="/stage"), 101.0)

    assert offers_more
    assert agent.staging == "/stage"
    assert registry.rooms()["a"].staging
    assert agent.to_json()["staging"] == "/stage"
