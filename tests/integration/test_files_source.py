"""The files source against real files and real watchdog observers, with an in-test sink."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from triggers.base import EventResult, TriggerConfig, TriggerEvent
from triggers.files import FilesSource
from triggers.specs import FilesSource as FilesSpec

SETTLE = 0.3


class Sink:
    """Records events with the time they arrived and the size of the file at that moment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.events: list[TriggerEvent] = []
        self.times: list[float] = []
        self.sizes: list[int | None] = []
        self.failures = 0

    async def __call__(self, event: TriggerEvent) -> EventResult:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("store unavailable")
        now = time.monotonic()
        path = self.root / event.fields["path"]
        self.times.append(now)
        self.sizes.append(path.stat().st_size if path.exists() else None)
        self.events.append(event)
        return EventResult(event_id=len(self.events), outcome="run", run_id=f"run-{len(self.events)}")

    def paths(self) -> list[str]:
        return [event.fields["path"] for event in self.events]


class States:
    def __init__(self) -> None:
        self.saved: dict[str, dict[str, Any]] = {}

    async def __call__(self, name: str, state: dict[str, Any]) -> None:
        self.saved[name] = state


async def eventually(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(sink: Sink, states: States, **knobs: float) -> AsyncIterator[FilesSource]:
    source = FilesSource(**knobs)
    async with contextlib.AsyncExitStack() as stack:
        await source.start(stack, sink, states)
        yield source


def config(name: str, root: Path, state: dict[str, Any] | None = None, **spec: Any) -> TriggerConfig:
    spec = {"datastore": "landing", "pattern": "**/*.csv", "settle": SETTLE} | spec
    return TriggerConfig(name=name, on=FilesSpec(**spec), root=str(root), state=state or {})


def write_slowly(path: Path, chunks: int = 10, seconds: float = 1.0) -> float:
    """Write ``path`` in ``chunks`` over ``seconds``; the monotonic time of the last write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for i in range(chunks):
            f.write(b"x" * 1000)
            f.flush()
            last = time.monotonic()
            if i < chunks - 1:
                time.sleep(seconds / chunks)
    return last


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "landing"
    path.mkdir()
    return path


async def test_slowly_written_files_fire_once_each_after_they_are_complete(root: Path) -> None:
    sink, states = Sink(root), States()
    async with running(sink, states) as source:
        await source.put(config("slow", root))
        names = [f"incoming/day{i % 3}/file{i:02}.csv" for i in range(50)]
        last_writes: dict[str, float] = {}
        lock = threading.Lock()

        def writer(batch: list[str]) -> None:
            for name in batch:
                last = write_slowly(root / name)
                with lock:
                    last_writes[name] = last

        threads = [threading.Thread(target=writer, args=(names[i::10],)) for i in range(10)]
        for thread in threads:
            thread.start()
        (root / "incoming" / "ignored.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "incoming" / "ignored.txt").write_text("not a csv")
        await asyncio.to_thread(lambda: [thread.join(30) for thread in threads])
        await eventually(lambda: len(sink.events) >= 50, within=15)
        await asyncio.sleep(SETTLE + 0.5)

    assert sorted(sink.paths()) == sorted(names)
    for event, at, size in zip(sink.events, sink.times, sink.sizes, strict=True):
        path = event.fields["path"]
        assert size == 10_000, path
        assert at >= last_writes[path] + SETTLE - 0.02, (path, at - last_writes[path])
        assert event.fields == {"datastore": "landing", "path": path, "paths": [path], "kind": "created"}
        st = (root / path).stat()
        assert event.dedupe_key == f"{path}:{st.st_mtime_ns}:{st.st_size}"
    assert len({event.dedupe_key for event in sink.events}) == 50


async def test_batch_turns_a_burst_into_one_event_per_window(root: Path) -> None:
    sink, states = Sink(root), States()
    async with running(sink, states) as source:
        await source.put(config("batched", root, settle=0.1, batch=1.0))
        for i in range(10):
            (root / f"b{i}.csv").write_text("data")
        await eventually(lambda: len(sink.events) == 1)
        for i in range(3):
            (root / "later" / f"c{i}.csv").parent.mkdir(exist_ok=True)
            (root / "later" / f"c{i}.csv").write_text("data")
        await eventually(lambda: len(sink.events) == 2)
        await asyncio.sleep(1.2)

    first, second = sink.events
    assert first.fields["paths"] == [f"b{i}.csv" for i in range(10)]
    assert first.fields["path"] == "b0.csv"
    assert first.fields["kind"] == "created"
    assert second.fields["paths"] == ["later/c0.csv", "later/c1.csv", "later/c2.csv"]
    assert first.dedupe_key.startswith("batch:")
    assert first.dedupe_key != second.dedupe_key


async def test_files_added_while_stopped_fire_once_after_put_with_the_saved_state(root: Path) -> None:
    sink, states = Sink(root), States()
    (root / "before.csv").write_text("1")
    async with running(sink, states) as source:
        await source.put(config("restart", root))
        await eventually(lambda: len(sink.events) == 1)
        (root / "kept.csv").write_text("2")
        await eventually(lambda: len(sink.events) == 2)
    saved = states.saved["restart"]
    assert set(saved["seen"]) == {"before.csv", "kept.csv"}

    (root / "while-down.csv").write_text("3")
    (root / "sub").mkdir()
    (root / "sub" / "deep.csv").write_text("4")
    with (root / "kept.csv").open("a") as f:
        f.write("more")

    sink2 = Sink(root)
    async with running(sink2, states) as source:
        await source.put(config("restart", root, state=saved))
        await eventually(lambda: len(sink2.events) == 3)
        await asyncio.sleep(SETTLE + 0.3)
    kinds = {event.fields["path"]: event.fields["kind"] for event in sink2.events}
    assert kinds == {"while-down.csv": "created", "sub/deep.csv": "created", "kept.csv": "modified"}

    sink3 = Sink(root)
    async with running(sink3, states) as source:
        await source.put(config("restart", root, state=states.saved["restart"]))
        await asyncio.sleep(SETTLE + 0.5)
    assert sink3.events == []


async def test_duplicate_modified_events_collapse(root: Path) -> None:
    sink, states = Sink(root), States()
    async with running(sink, states) as source:
        await source.put(config("dups", root, events=["created", "modified"]))
        target = root / "a.csv"
        target.write_text("hello")
        await eventually(lambda: len(sink.events) == 1)
        st = target.stat()
        for _ in range(5):  # attribute changes, reads and empty writes: events, but no new content
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
            target.read_text()
            with target.open("a"):
                pass
        await asyncio.sleep(SETTLE + 0.4)
        assert len(sink.events) == 1
        target.write_text("hello, again")
        await eventually(lambda: len(sink.events) == 2)
        await asyncio.sleep(SETTLE + 0.3)
    assert [event.fields["kind"] for event in sink.events] == ["created", "modified"]


async def test_moves_into_the_folder_count_as_created(root: Path, tmp_path: Path) -> None:
    sink, states = Sink(root), States()
    outside = tmp_path / "outside"
    outside.mkdir()
    async with running(sink, states) as source:
        await source.put(config("moves", root, events=["created"]))
        (outside / "m.csv").write_text("moved in")
        os.rename(outside / "m.csv", root / "m.csv")
        (root / "part.csv.tmp").write_text("renamed when complete")
        os.rename(root / "part.csv.tmp", root / "part.csv")
        (outside / "dir").mkdir()
        (outside / "dir" / "n.csv").write_text("a directory moved in")
        os.rename(outside / "dir", root / "dir")
        await eventually(lambda: len(sink.events) == 3)
        await asyncio.sleep(SETTLE + 0.3)
    assert sorted(sink.paths()) == ["dir/n.csv", "m.csv", "part.csv"]
    assert {event.fields["kind"] for event in sink.events} == {"created"}


async def test_moved_and_deleted_events_when_asked(root: Path) -> None:
    sink, states = Sink(root), States()
    async with running(sink, states) as source:
        await source.put(config("lifecycle", root, events=["created", "moved", "deleted"]))
        (root / "x.csv").write_text("x")
        await eventually(lambda: len(sink.events) == 1)
        mtime = (root / "x.csv").stat().st_mtime_ns
        os.rename(root / "x.csv", root / "y.csv")
        await eventually(lambda: len(sink.events) == 2)
        (root / "y.csv").unlink()
        await eventually(lambda: len(sink.events) == 3)
        await asyncio.sleep(SETTLE + 0.3)
        assert states.saved["lifecycle"] == {"seen": {}}
    created, moved, deleted = sink.events
    assert created.fields["kind"] == "created"
    assert moved.fields | {} == {
        "datastore": "landing",
        "path": "y.csv",
        "paths": ["y.csv"],
        "kind": "moved",
        "moved_from": "x.csv",
    }
    assert deleted.fields["kind"] == "deleted"
    assert deleted.fields["path"] == "y.csv"
    assert deleted.dedupe_key == f"y.csv:deleted:{mtime}"


async def test_polling_watch(root: Path) -> None:
    sink, states = Sink(root), States()
    async with running(sink, states) as source:
        await source.put(config("polled", root, watch="poll", poll_interval=0.1, settle=0.2))
        assert source.status("polled") == {"watch": "poll", "pending": 0, "error": None}
        await asyncio.to_thread(write_slowly, root / "p.csv", 5, 0.5)
        await eventually(lambda: len(sink.events) == 1)
        await asyncio.sleep(0.5)
    assert sink.paths() == ["p.csv"]
    assert sink.sizes == [5000]


async def test_remove_stops_events(root: Path) -> None:
    sink, states = Sink(root), States()
    async with running(sink, states) as source:
        await source.put(config("gone", root))
        await source.put(config("stays", root, pattern="*.txt"))
        assert source.status("gone")["watch"] == "inotify"
        (root / "one.csv").write_text("1")
        await eventually(lambda: len(sink.events) == 1)
        await source.remove("gone")
        await source.remove("unknown")
        assert source.status("gone") == {}
        (root / "two.csv").write_text("2")
        (root / "three.txt").write_text("3")
        await eventually(lambda: len(sink.events) == 2)
        await asyncio.sleep(SETTLE + 0.3)
    assert [event.trigger for event in sink.events] == ["gone", "stays"]
    assert sink.paths() == ["one.csv", "three.txt"]


async def test_a_failing_sink_is_retried_and_the_file_stays_pending(root: Path) -> None:
    sink, states = Sink(root), States()
    sink.failures = 3
    async with running(sink, states, retry_base=0.05) as source:
        await source.put(config("retry", root))
        (root / "r.csv").write_text("r")
        await eventually(lambda: sink.failures == 0)
        assert source.status("retry")["pending"] >= 0
        await eventually(lambda: len(sink.events) == 1)
        await asyncio.sleep(SETTLE + 0.3)
        await eventually(lambda: "r.csv" in states.saved.get("retry", {}).get("seen", {}), within=2)
    assert sink.paths() == ["r.csv"]


@pytest.mark.parametrize("watch", ["poll", "inotify"])
async def test_a_watcher_whose_root_goes_away_restarts_and_says_so(root: Path, watch: str) -> None:
    sink, states = Sink(root), States()
    knobs = {"health_interval": 0.05, "restart_base": 0.05, "restart_cap": 0.2}
    async with running(sink, states, **knobs) as source:
        await source.put(config("mount", root, watch=watch, poll_interval=0.05, settle=0.1))
        (root / "a.csv").write_text("a")
        await eventually(lambda: len(sink.events) == 1)
        moved_away = root.with_name("landing-unmounted")
        os.rename(root, moved_away)  # the mount goes away
        await eventually(lambda: source.status("mount")["error"] is not None)
        assert "unreachable" in source.status("mount")["error"]
        (moved_away / "while-away.csv").write_text("w")
        os.rename(moved_away, root)  # and comes back
        await eventually(lambda: source.status("mount")["error"] is None)
        assert source.status("mount")["watch"] == watch
        (root / "b.csv").write_text("b")
        await eventually(lambda: len(sink.events) == 3)
        await asyncio.sleep(0.3)
    assert sorted(sink.paths()) == ["a.csv", "b.csv", "while-away.csv"]


async def test_an_inotify_overflow_rescans_and_loses_nothing(root: Path) -> None:
    sink, states = Sink(root), States()
    async with running(sink, states) as source:
        await source.put(config("overflow", root))
        watched = source._triggers["overflow"]
        watched.bridge.closed = True  # from here on, events are lost as in a queue overflow
        for i in range(5):
            (root / f"lost{i}.csv").write_text("lost")
        await asyncio.sleep(0.2)
        watched.bridge.closed = False
        assert sink.events == []
        # what watchdog logs when the kernel reports IN_Q_OVERFLOW
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        await eventually(lambda: len(sink.events) == 5)
        await asyncio.sleep(SETTLE + 0.2)
    assert sorted(sink.paths()) == [f"lost{i}.csv" for i in range(5)]
