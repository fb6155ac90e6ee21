"""The order in which a dispatch pass looks at ready steps: runs take turns, without I/O."""

from __future__ import annotations

from daemon.rules.turns import Turns, round_robin


def run_of(step: str) -> str:
    return step[0]


def test_round_robin_takes_one_item_of_each_queue_in_turn() -> None:
    assert round_robin([["a1", "a2", "a3"], ["b1"], ["c1", "c2"]]) == ["a1", "b1", "c1", "a2", "c2", "a3"]
    assert round_robin([]) == []
    assert round_robin([[], ["b1"]]) == ["b1"]


def test_runs_take_turns_oldest_first_each_keeping_its_order() -> None:
    turns: Turns[str] = Turns()
    ready = [f"a{i}" for i in range(1, 6)] + ["b1", "c1", "c2"]
    assert turns.order(ready, run_of) == ["a1", "b1", "c1", "a2", "c2", "a3", "a4", "a5"]
    assert list(turns) == ["a", "b", "c"]


def test_a_run_served_goes_to_the_back() -> None:
    turns: Turns[str] = Turns()
    ready = [f"a{i}" for i in range(1, 21)] + ["b1"]
    assert turns.order(ready, run_of)[:2] == ["a1", "b1"]
    turns.served(["a"])  # one slot was free: a1 took it
    ready.remove("a1")
    assert turns.order(ready, run_of)[:2] == ["b1", "a2"]  # the next slot is b's
    turns.served(["b"])
    ready.remove("b1")
    assert turns.order(ready, run_of)[:2] == ["a2", "a3"]


def test_each_run_gets_a_slot_before_any_run_gets_a_second_one() -> None:
    turns: Turns[str] = Turns()
    ready = ["a1", "a2", "a3", "b1", "b2", "c1"]
    turns.order(ready, run_of)
    turns.served(["a", "b"])  # two slots: a1 and b1
    assert turns.order(["a2", "a3", "b2", "c1"], run_of) == ["c1", "a2", "b2", "a3"]
    turns.served(["c", "a", "b", "a"])  # a run served twice goes back by its last step
    assert list(turns) == ["c", "b", "a"]


def test_a_run_newly_ready_joins_behind_the_runs_already_waiting() -> None:
    turns: Turns[str] = Turns()
    turns.order(["b1", "a1"], run_of)
    turns.served(["b"])
    # c became ready after a was waiting, and after b was served: a, b, then c.
    assert turns.order(["c1", "a1", "b2"], run_of) == ["a1", "b2", "c1"]


def test_a_run_with_nothing_ready_leaves_the_turn_order() -> None:
    turns: Turns[str] = Turns()
    turns.order(["a1", "b1"], run_of)
    assert turns.order(["b2"], run_of) == ["b2"]
    assert list(turns) == ["b"]
    assert turns.order(["a2", "b3"], run_of) == ["b3", "a2"]  # a comes back as a newcomer


def test_a_thousand_runs_interleave() -> None:
    turns: Turns[int] = Turns()
    ready = [(run, index) for run in range(1_000) for index in range(100)]
    order = turns.order(ready, lambda step: step[0])
    assert len(order) == len(ready)
    assert order[:3] == [(0, 0), (1, 0), (2, 0)]
    assert order[1_000] == (0, 1)
    assert order[-1] == (999, 99)
