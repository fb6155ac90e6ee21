"""The settle and batch rules of files triggers, driven with clock values and signatures."""

from __future__ import annotations

from triggers.files.settle import Batcher, Settled, Settler, Signature, batch_key, classify

A1 = Signature(mtime_ns=1_000, size=10)
A2 = Signature(mtime_ns=2_000, size=20)


def settle_all(settler: Settler, now: float, stats: dict[str, Signature | None]) -> list[str]:
    """One tick of the loop: the due paths, confirmed with ``stats``; those that settled."""
    return [path for path in settler.due(now) if settler.confirm(path, stats.get(path), now) is not None]


def test_a_file_settles_once_its_signature_held_for_settle_seconds() -> None:
    settler = Settler(2.0)
    settler.observe("a", A1, now=10.0)
    assert settler.next_deadline() == 12.0
    assert settler.due(11.9) == []
    assert settle_all(settler, 12.0, {"a": A1}) == ["a"]
    assert len(settler) == 0
    assert settler.next_deadline() is None


def test_a_file_written_in_chunks_settles_after_the_last_chunk() -> None:
    settler = Settler(0.5)
    for i in range(10):  # one chunk every 0.1 s: each write a new signature
        settler.observe("a", Signature(1_000 + i, 100 * (i + 1)), now=i * 0.1)
        assert settle_all(settler, i * 0.1, {"a": Signature(1_000 + i, 100 * (i + 1))}) == []
    final = Signature(1_009, 1_000)
    assert settler.next_deadline() == 0.9 + 0.5
    assert settle_all(settler, 1.3, {"a": final}) == []
    assert settle_all(settler, 1.4, {"a": final}) == ["a"]


def test_a_change_seen_only_at_the_recheck_restarts_the_wait() -> None:
    settler = Settler(1.0)  # a polling watcher: no event for the second write
    settler.observe("a", A1, now=0.0)
    assert settle_all(settler, 1.0, {"a": A2}) == []
    assert settler.next_deadline() == 2.0
    assert settle_all(settler, 2.0, {"a": A2}) == ["a"]


def test_repeated_events_with_the_same_signature_do_not_postpone() -> None:
    settler = Settler(1.0)
    settler.observe("a", A1, now=0.0)
    settler.observe("a", A1, now=0.5)
    settler.observe("a", A1, now=0.9)
    assert settle_all(settler, 1.0, {"a": A1}) == ["a"]


def test_an_event_during_the_recheck_wins() -> None:
    settler = Settler(1.0)
    settler.observe("a", A1, now=0.0)
    due = settler.due(1.0)
    settler.observe("a", A2, now=1.01)  # arrives while the re-stat runs off the loop
    assert settler.confirm(due[0], A2, 1.02) is None
    assert settle_all(settler, 2.01, {"a": A2}) == ["a"]


def test_many_paths_settle_in_deadline_order() -> None:
    settler = Settler(1.0)
    for i, path in enumerate(["c", "a", "b"]):
        settler.observe(path, A1, now=float(i))
    assert settle_all(settler, 1.5, {"c": A1, "a": A1, "b": A1}) == ["c"]
    assert settle_all(settler, 3.0, {"a": A1, "b": A1}) == ["a", "b"]


def test_a_deletion_settles_too_and_a_reappearing_file_is_no_deletion() -> None:
    settler = Settler(1.0)
    settler.observe("a", None, now=0.0)
    assert settle_all(settler, 1.0, {"a": A1}) == []  # it came back: settle again as a file
    assert settle_all(settler, 2.0, {"a": A1}) == ["a"]
    settler.observe("b", None, now=5.0)
    entry = settler.due(6.0)
    assert settler.confirm(entry[0], None, 6.0) is not None


def test_a_move_is_remembered_until_it_settles() -> None:
    settler = Settler(1.0)
    settler.observe("new", A1, now=0.0, moved_from="old")
    [path] = settler.due(1.0)
    entry = settler.confirm(path, A1, 1.0)
    assert entry is not None
    assert entry.moved_from == "old"


def test_zero_settle_fires_at_the_next_tick() -> None:
    settler = Settler(0.0)
    settler.observe("a", A1, now=3.0)
    assert settle_all(settler, 3.0, {"a": A1}) == ["a"]


def test_classify() -> None:
    assert classify("a", A1, None) == Settled("a", "created", A1)
    assert classify("a", A2, A1) == Settled("a", "modified", A2, A1)
    assert classify("a", A1, A1) is None  # duplicate modified: nothing new
    assert classify("a", None, A1) == Settled("a", "deleted", None, A1)
    assert classify("a", None, None) is None  # came and went before it settled
    assert classify("b", A1, None, moved_from="a", moved_from_known=A1) == Settled(
        "b", "moved", A1, None, "a"
    )
    assert classify("b", A1, None, moved_from="a", moved_from_known=None).kind == "created"


def test_dedupe_keys() -> None:
    assert Settled("d/a.csv", "created", A1).dedupe_key == "d/a.csv:1000:10"
    assert Settled("d/a.csv", "deleted", None, A1).dedupe_key == "d/a.csv:deleted:1000"
    one = [Settled("a", "created", A1), Settled("b", "created", A2)]
    assert batch_key(one) == batch_key(list(reversed(one)))
    assert batch_key(one) != batch_key([Settled("a", "created", A2), Settled("b", "created", A2)])
    assert batch_key(one).startswith("batch:")


def test_batch_window_opens_with_its_first_file() -> None:
    batcher = Batcher(5.0)
    assert batcher.take(100.0) is None
    batcher.add(Settled("b", "created", A1), now=10.0)
    batcher.add(Settled("a", "created", A1), now=12.0)
    batcher.add(Settled("b", "created", A2), now=13.0)  # the same file again: its latest version
    assert batcher.deadline == 15.0
    assert batcher.take(14.9) is None
    items = batcher.take(15.0)
    assert items is not None
    assert [item.path for item in items] == ["a", "b"]
    assert items[1].sig == A2
    assert batcher.deadline is None
    assert len(batcher) == 0
    batcher.add(Settled("c", "created", A1), now=20.0)
    assert batcher.deadline == 25.0
