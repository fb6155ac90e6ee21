"""The agent's object cache on a real directory: one fetch per object version, read-only hard links
(or copies, for a step in a container) into attempts, and eviction of the least recently used
entries that no attempt links."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from runners.objectcache import ObjectCache


def fetcher(content: bytes, calls: list[str]):
    async def fetch(file: Path) -> None:
        calls.append(file.name)
        await asyncio.to_thread(file.write_bytes, content)

    return fetch


async def test_an_object_is_fetched_once_and_linked_read_only(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "objects")
    calls: list[str] = []
    identity = ("http://s3", "bucket", "a/b.csv", '"etag-1"')
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()

    first = await cache.place(identity, 4, tmp_path / "one" / "b.csv", fetcher(b"data", calls))
    second = await cache.place(identity, 4, tmp_path / "two" / "b.csv", fetcher(b"data", calls))
    rewritten = await cache.place(
        (*identity[:3], '"etag-2"'), 3, tmp_path / "two" / "c.csv", fetcher(b"new", calls)
    )

    assert (first, second, rewritten) == (False, True, False)
    assert len(calls) == 2
    assert (tmp_path / "two" / "b.csv").read_bytes() == b"data"
    assert (tmp_path / "two" / "c.csv").read_bytes() == b"new"
    assert os.stat(tmp_path / "one" / "b.csv").st_mode & 0o222 == 0
    assert os.stat(tmp_path / "one" / "b.csv").st_ino == os.stat(cache.entry(identity)).st_ino


@pytest.mark.parametrize("change", ["made-writable", "appended-as-root"])
async def test_an_entry_written_through_an_attempts_link_is_fetched_again(
    tmp_path: Path, change: str
) -> None:
    cache = ObjectCache(tmp_path / "objects")
    calls: list[str] = []
    identity = ("http://s3", "bucket", "a/b.csv", '"etag-1"')
    for attempt in ("one", "two"):
        (tmp_path / attempt).mkdir()
    await cache.place(identity, 4, tmp_path / "one" / "b.csv", fetcher(b"data", calls))

    linked = tmp_path / "one" / "b.csv"
    if change == "made-writable":  # what a step running as the agent's user can do
        linked.chmod(0o644)
        linked.write_bytes(b"evil")
    else:  # root ignores the mode: what a step running as root in a container can do
        os.chmod(linked, 0o644)
        with linked.open("ab") as handle:
            handle.write(b"!")
        os.chmod(linked, 0o444)

    hit = await cache.place(identity, 4, tmp_path / "two" / "b.csv", fetcher(b"data", calls))
    assert not hit
    assert len(calls) == 2
    assert (tmp_path / "two" / "b.csv").read_bytes() == b"data"


async def test_a_container_attempt_gets_copies_it_cannot_write_into_the_cache(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "objects")
    calls: list[str] = []
    identity = ("http://s3", "bucket", "a/b.csv", '"etag-1"')
    for attempt in ("fetched", "hit", "later"):
        (tmp_path / attempt).mkdir()

    placed = [tmp_path / "fetched" / "b.csv", tmp_path / "hit" / "b.csv"]
    for dest in placed:
        await cache.place(identity, 4, dest, fetcher(b"data", calls), copy=True)
        assert os.stat(dest).st_mode & 0o222 == 0
        assert os.stat(dest).st_ino != os.stat(cache.entry(identity)).st_ino
        # What root in a container can do: write in place, same size, mode restored.
        os.chmod(dest, 0o644)
        with dest.open("r+b") as handle:
            handle.write(b"evil")
        os.chmod(dest, 0o444)

    hit = await cache.place(identity, 4, tmp_path / "later" / "b.csv", fetcher(b"data", calls))
    assert hit
    assert len(calls) == 1
    assert (tmp_path / "later" / "b.csv").read_bytes() == b"data"


async def test_a_failed_fetch_leaves_nothing(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "objects")

    async def broken(file: Path) -> None:
        await asyncio.to_thread(file.write_bytes, b"half")
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        await cache.place(("e", "b", "k", "t"), 4, tmp_path / "k", broken)

    assert not (tmp_path / "k").exists()
    assert [path for path in (tmp_path / "objects").rglob("*") if path.is_file()] == []


async def test_eviction_drops_the_least_recently_used_entries_no_attempt_links(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "objects", cap=2000)
    attempt = tmp_path / "attempt"
    attempt.mkdir()
    for number, age in enumerate([300, 200, 100, 400]):
        identity = ("e", "b", f"k{number}", "t")
        await cache.place(identity, 1000, attempt / f"k{number}", fetcher(b"x" * 1000, []))
        os.utime(cache.entry(identity), (0, 1_000_000 - age))
    for name in ("k0", "k1", "k2"):  # k3, the oldest, stays linked into a running attempt
        (attempt / name).unlink()

    await cache.evict()

    left = sorted(path.name for path in (tmp_path / "objects").rglob("*") if path.is_file())
    assert left == sorted(cache.entry(("e", "b", key, "t")).name for key in ("k2", "k3"))
