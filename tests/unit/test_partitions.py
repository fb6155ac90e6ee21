"""How a foreach step fans out, and how its partitions add up, without I/O."""

from __future__ import annotations

import random

import pytest

from daemon.rules.partitions import (
    Partition,
    fan_in,
    files,
    gathered,
    items,
    name_of,
    shards,
    spread,
    tolerated,
)
from daemon.rules.states import advance


def day(count: int, start: int = 0) -> list[str]:
    return [f"2026-12-06/part-{number:05d}.csv" for number in range(start, start + count)]


def as_previous(partitions: list[Partition]) -> dict[int, tuple[str, ...]]:
    return {partition.index: partition.files for partition in partitions}


def changed(before: list[Partition], after: list[Partition]) -> set[int]:
    """Partitions that run again: new, or with other files than before."""
    was = as_previous(before)
    return {partition.index for partition in after if was.get(partition.index) != partition.files}


def test_the_first_run_cuts_sorted_files_into_consecutive_partitions() -> None:
    made = files(list(reversed(day(25))), per=10)
    assert [len(partition.files) for partition in made] == [10, 10, 5]
    assert [partition.index for partition in made] == [0, 1, 2]
    assert made[0].files == tuple(day(10))


def test_five_new_files_change_at_most_five_partitions() -> None:
    first = files(day(100), per=10)
    second = files(day(105), per=10, previous=as_previous(first))
    assert changed(first, second) == {10}  # one new partition holds all five
    assert sorted(name for partition in second for name in partition.files) == day(105)


def test_files_arriving_between_others_do_not_shift_later_partitions() -> None:
    names = [f"f{number:03d}" for number in range(0, 200, 2)]  # even names
    first = files(names, per=10)
    arrivals = ["f021", "f101", "f151"]  # odd names, sorting into the middle of partitions
    second = files(names + arrivals, per=10, previous=as_previous(first))
    assert len(changed(first, second)) <= len(arrivals)


def test_a_removed_file_leaves_room_that_arrivals_fill_first() -> None:
    first = files(day(30), per=10)
    gone = first[1].files[3]
    current = [name for name in day(32) if name != gone]  # one gone, two new
    second = files(current, per=10, previous=as_previous(first))
    assert changed(first, second) == {1, 3}  # partition 1 takes one arrival; the other starts a new one
    assert len(second[1].files) == 10


def test_random_churn_of_k_files_changes_at_most_k_partitions() -> None:
    rng = random.Random(7)
    universe = [f"file-{rng.random():.12f}" for _ in range(3000)]
    current = universe[:1000]
    partitions = files(current, per=10)
    for _ in range(50):
        removed = rng.sample(current, rng.randint(0, 5))
        added = rng.sample([name for name in universe if name not in current], rng.randint(0, 5))
        current = [name for name in current if name not in removed] + added
        after = files(current, per=10, previous=as_previous(partitions))
        assert len(changed(partitions, after)) <= len(removed) + len(added)
        assert sorted(name for partition in after for name in partition.files) == sorted(current)
        assert all(0 < len(partition.files) <= 10 for partition in after)
        partitions = after


def test_a_smaller_per_cuts_again_from_scratch() -> None:
    first = files(day(20), per=10)
    assert [len(partition.files) for partition in files(day(20), per=5, previous=as_previous(first))] == [
        5
    ] * 4


def test_shards_and_items_number_their_partitions() -> None:
    assert shards(3) == [Partition(0, item=0), Partition(1, item=1), Partition(2, item=2)]
    assert [partition.item for partition in items(["small", "large"])] == ["small", "large"]
    assert name_of("score", 3) == "score[3]"
    with pytest.raises(ValueError, match="per must be at least 1"):
        files(["a"], per=0)


@pytest.mark.parametrize(
    ("allowed", "total", "count"), [(1, 10, 1), ("10%", 10, 1), ("10%", 9, 0), ("50%", 5, 2)]
)
def test_allowed_failures_is_a_count_or_a_percentage_rounded_down(allowed, total: int, count: int) -> None:
    assert tolerated(allowed, total) == count


def test_a_step_succeeds_within_its_allowed_failures_and_fails_beyond() -> None:
    assert fan_in(["succeeded", "running"], 0) is None
    assert fan_in(["succeeded", "reused", "failed"], 1) == "succeeded"
    assert fan_in(["succeeded", "reused", "failed"], 0) == "failed"
    assert fan_in(["succeeded", "failed", "failed"], "50%") == "failed"
    assert fan_in(["succeeded", "cancelled"], 5) == "cancelled"


def test_a_step_is_running_while_its_partitions_are_and_ends_with_them() -> None:
    partitions = {"score": ["score[0]", "score[1]"]}
    statuses = {"score": "running", "score[0]": "succeeded", "score[1]": "running"}
    assert gathered(statuses, partitions, {}) == {}
    statuses["score[1]"] = "failed"
    assert gathered(statuses, partitions, {"score": 1}) == {"score": "succeeded"}
    assert gathered(statuses, partitions, {}) == {"score": "failed"}
    waiting = {"score": "pending", "score[0]": "pending", "score[1]": "reused"}
    assert gathered(waiting, partitions, {}) == {}
    reused = {"score": "pending", "score[0]": "reused", "score[1]": "reused"}
    assert gathered(reused, partitions, {}) == {"score": "succeeded"}


def test_a_step_made_ready_runs_as_its_partitions() -> None:
    partitions = {"score": ["score[0]", "score[1]"]}
    statuses = {"prep": "succeeded", "score": "pending", "score[0]": "pending", "score[1]": "reused"}
    assert spread({"score": "ready"}, statuses, partitions) == {"score": "running", "score[0]": "ready"}
    assert spread({"score": "skipped"}, statuses, partitions) == {"score": "skipped", "score[0]": "skipped"}
    assert spread({"report": "ready"}, statuses, partitions) == {"report": "ready"}


def test_the_state_machine_runs_a_fanned_out_step_through_its_partitions() -> None:
    graph = {"prep": (), "score": ("prep",), "report": ("score",)}
    partitions = {"score": ["score[0]", "score[1]"]}
    statuses = {"prep": "succeeded", "score": "pending", "report": "pending"}
    statuses |= {"score[0]": "pending", "score[1]": "pending"}
    plan = advance(statuses, graph, run_status="running", partitions=partitions)
    assert plan.changes == {"score": "running", "score[0]": "ready", "score[1]": "ready"}
    statuses |= plan.changes | {"score[0]": "succeeded", "score[1]": "failed"}
    tolerant = advance(statuses, graph, run_status="running", partitions=partitions, allowed={"score": 1})
    assert tolerant.changes == {"score": "succeeded", "report": "ready"}
    strict = advance(statuses, graph, run_status="running", partitions=partitions)
    assert strict.changes == {"score": "failed", "report": "skipped"}
    assert strict.outcome == "failed"


def test_a_step_with_no_partition_has_nothing_to_do_once_ready() -> None:
    statuses = {"score": "pending"}
    assert spread({"score": "ready"}, statuses, {"score": []}) == {"score": "succeeded"}
