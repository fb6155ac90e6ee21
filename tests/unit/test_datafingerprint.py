"""Fingerprints of datastore data, taken of real files in a temporary directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from daemon.planning import data_fingerprints as datafingerprint
from daemon.planning.data_fingerprints import MISSING, DataFingerprints, DataUnreadable

AN_HOUR_AGO_NS = time.time_ns() - 3600 * 10**9


def write(path: Path, data: bytes, *, mtime_ns: int = AN_HOUR_AGO_NS) -> Path:
    """``data`` at ``path`` with a fixed mtime, so fingerprints depend on what the test chose."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write(root / "a.csv", b"id,x\n1,2\n")
    write(root / "part" / "b.csv", b"id,x\n3,4\n")
    write(root / "part" / "deeper" / "c.bin", bytes(range(256)) * 64)
    return root


async def both(fingerprints: DataFingerprints, path: Path) -> tuple[str, str]:
    return await fingerprints.of(path), await fingerprints.of(path, content=True)


async def test_unchanged_data_gives_the_same_fingerprints(tree: Path) -> None:
    fingerprints = DataFingerprints()
    listing, content = await both(fingerprints, tree)
    assert listing.startswith("sha256:")
    assert content.startswith("sha256:")
    assert listing != content
    assert await both(DataFingerprints(), tree) == (listing, content)
    assert await both(fingerprints, str(tree)) == (listing, content)


async def test_a_copy_elsewhere_with_the_same_times_gives_the_same_fingerprints(
    tree: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(tree, tmp_path / "copy")  # copies mtimes too
    fingerprints = DataFingerprints()
    assert await both(fingerprints, copy) == await both(fingerprints, tree)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda root: write(root / "a.csv", b"id,x\n1,2\n9,9\n"), id="size"),
        pytest.param(
            lambda root: os.utime(root / "a.csv", ns=(AN_HOUR_AGO_NS, AN_HOUR_AGO_NS + 10**6)), id="mtime"
        ),
        pytest.param(lambda root: write(root / "part" / "new.csv", b""), id="added"),
        pytest.param(lambda root: (root / "part" / "b.csv").unlink(), id="removed"),
        pytest.param(lambda root: (root / "part" / "b.csv").rename(root / "part" / "b2.csv"), id="renamed"),
        pytest.param(lambda root: (root / "part" / "b.csv").rename(root / "b.csv"), id="moved"),
        pytest.param(lambda root: (root / "empty").mkdir(), id="empty-dir-added"),
    ],
)
async def test_each_change_shows_in_the_listing(tree: Path, change) -> None:
    fingerprints = DataFingerprints()
    before = await fingerprints.of(tree)
    change(tree)
    assert await fingerprints.of(tree) != before


async def test_a_touch_changes_the_listing_not_the_content(tree: Path) -> None:
    fingerprints = DataFingerprints()
    listing, content = await both(fingerprints, tree)
    os.utime(tree / "a.csv")
    assert await fingerprints.of(tree) != listing
    assert await fingerprints.of(tree, content=True) == content


async def test_a_rewrite_that_keeps_size_and_mtime_shows_in_the_content_only(tree: Path) -> None:
    fingerprints = DataFingerprints(min_age_s=0)  # cache even fresh files: the ctime in the key must tell
    await asyncio.sleep(0.05)  # a tick of the filesystem clock or more, so the rewrite moves ctime
    listing, content = await both(fingerprints, tree)
    assert fingerprints.cached_files == 3
    write(tree / "a.csv", b"id,x\n1,3\n")  # same size, same (forced) mtime, same inode
    assert await fingerprints.of(tree) == listing  # listing cannot see it: that is what content is for
    assert await fingerprints.of(tree, content=True) != content


async def test_a_file_replaced_by_one_of_equal_size_and_mtime_shows_in_the_content_only(tree: Path) -> None:
    fingerprints = DataFingerprints(min_age_s=0)
    await asyncio.sleep(0.05)
    listing, content = await both(fingerprints, tree)
    replacement = write(tree.parent / "replacement", b"id,x\n1,3\n")
    replacement.replace(tree / "a.csv")
    assert await fingerprints.of(tree) == listing
    assert await fingerprints.of(tree, content=True) != content


async def test_a_missing_path_has_the_missing_fingerprint(tmp_path: Path) -> None:
    fingerprints = DataFingerprints()
    assert await fingerprints.of(tmp_path / "nothing") == MISSING
    assert await fingerprints.of(tmp_path / "nothing", content=True) == MISSING
    write(tmp_path / "file", b"x")
    assert await fingerprints.of(tmp_path / "file" / "below") == MISSING
    os.symlink(tmp_path / "nothing", tmp_path / "broken")
    assert await fingerprints.of(tmp_path / "broken") == MISSING


async def test_an_empty_directory_is_not_missing(tmp_path: Path) -> None:
    fingerprints = DataFingerprints()
    (tmp_path / "empty").mkdir()
    assert await fingerprints.of(tmp_path / "empty") not in (MISSING, await fingerprints.of(tmp_path))


async def test_a_file_differs_from_a_directory_holding_only_that_file(tmp_path: Path) -> None:
    fingerprints = DataFingerprints()
    file = write(tmp_path / "alone" / "x.csv", b"1,2\n")
    for content in (False, True):
        assert await fingerprints.of(file, content=content) != await fingerprints.of(
            file.parent, content=content
        )


async def test_a_single_file_fingerprint_follows_its_data(tmp_path: Path) -> None:
    fingerprints = DataFingerprints()
    file = write(tmp_path / "x.csv", b"1,2\n")
    listing, content = await both(fingerprints, file)
    write(file, b"1,2,3\n")
    after = await both(fingerprints, file)
    assert after[0] != listing
    assert after[1] != content


async def test_a_symlink_to_a_file_counts_as_that_file(tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere" / "b.csv", b"id\n1\n")
    linked, copied = tmp_path / "linked", tmp_path / "copied"
    write(linked / "a.csv", b"a\n")
    os.symlink(target, linked / "b.csv")
    write(copied / "a.csv", b"a\n")
    write(copied / "b.csv", b"id\n1\n")
    fingerprints = DataFingerprints()
    assert await both(fingerprints, linked) == await both(fingerprints, copied)
    write(target, b"id\n2\n")
    assert (await both(fingerprints, linked))[1] != (await both(fingerprints, copied))[1]


async def test_broken_links_are_left_out(tree: Path) -> None:
    fingerprints = DataFingerprints()
    before = await both(fingerprints, tree)
    os.symlink(tree / "nothing", tree / "broken")
    assert await both(fingerprints, tree) == before


async def test_symlink_loops_end_and_directory_links_are_not_followed(tree: Path, tmp_path: Path) -> None:
    fingerprints = DataFingerprints()
    os.symlink(".", tree / "part" / "loop")
    os.symlink("../..", tree / "part" / "deeper" / "up")
    os.symlink("self", tree / "self")
    other = tmp_path / "other"
    write(other / "z.csv", b"z\n")
    os.symlink(other, tree / "other")
    async with asyncio.timeout(10):
        before = await both(fingerprints, tree)
        write(other / "z.csv", b"zz\n")  # behind a directory link: not walked, not seen
        assert await both(fingerprints, tree) == before
        (tree / "other").unlink()
        os.symlink(tmp_path, tree / "other")  # retargeted: seen
        assert await fingerprints.of(tree) != before[0]


async def test_the_fingerprinted_path_may_be_a_symlink(tree: Path, tmp_path: Path) -> None:
    os.symlink(tree, tmp_path / "current")
    fingerprints = DataFingerprints()
    assert await both(fingerprints, tmp_path / "current") == await both(fingerprints, tree)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
async def test_an_unreadable_directory_or_file_raises_naming_it(tree: Path) -> None:
    fingerprints = DataFingerprints()
    locked = tree / "part" / "deeper"
    locked.chmod(0)
    try:
        with pytest.raises(DataUnreadable, match=str(locked)) as raised:
            await fingerprints.of(tree)
        assert raised.value.path == str(locked)
    finally:
        locked.chmod(0o755)
    (tree / "a.csv").chmod(0)
    await fingerprints.of(tree)  # a listing only stats the file
    with pytest.raises(DataUnreadable, match=r"a\.csv"):
        await fingerprints.of(tree, content=True)


def test_an_unreadable_path_reads_as_a_sluice_error() -> None:
    error = DataUnreadable("/data/x", PermissionError(13, "Permission denied"))
    assert error.to_json()["error"] == {
        "code": "data_unreadable",
        "message": "cannot read /data/x: Permission denied",
        "details": [],
    }


async def test_concurrent_calls_for_one_input_share_one_walk(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    walked: list[str] = []
    release = threading.Event()
    walk = datafingerprint._walk

    def held_walk(root: str, within: str | None = None):
        walked.append(root)
        assert release.wait(10)
        return walk(root, within)

    monkeypatch.setattr(datafingerprint, "_walk", held_walk)
    fingerprints = DataFingerprints()
    calls = [asyncio.create_task(fingerprints.of(tree)) for _ in range(20)]
    calls.append(asyncio.create_task(fingerprints.of(tree, content=True)))
    await asyncio.sleep(0.1)  # every call is now waiting on a walk that cannot finish yet
    calls[0].cancel()  # one caller giving up does not cancel the others' walk
    release.set()
    async with asyncio.timeout(10):
        results = await asyncio.gather(*calls[1:])
    assert calls[0].cancelled()
    assert len(set(results[:-1])) == 1
    assert sorted(walked) == [str(tree), str(tree)]  # one listing walk, one content walk
    await fingerprints.of(tree)  # once finished, a later call walks again: listings are not cached
    assert len(walked) == 3


async def test_a_second_content_fingerprint_reads_only_changed_files(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[str] = []
    file_digest = datafingerprint._file_digest

    def counted_file_digest(path: str):
        read.append(os.path.basename(path))
        return file_digest(path)

    monkeypatch.setattr(datafingerprint, "_file_digest", counted_file_digest)
    fingerprints = DataFingerprints(min_age_s=0)
    first = await fingerprints.of(tree, content=True)
    assert sorted(read) == ["a.csv", "b.csv", "c.bin"]
    assert await fingerprints.of(tree, content=True) == first
    assert len(read) == 3
    write(tree / "a.csv", b"changed\n")
    assert await fingerprints.of(tree, content=True) != first
    assert read[3:] == ["a.csv"]


@pytest.fixture
def read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the files whose content is hashed, in order."""
    paths: list[str] = []
    file_digest = datafingerprint._file_digest
    monkeypatch.setattr(datafingerprint, "_file_digest", lambda path: paths.append(path) or file_digest(path))
    return paths


async def test_a_file_changed_just_now_is_read_again_rather_than_cached(
    tmp_path: Path, read: list[str]
) -> None:
    file = write(tmp_path / "fresh.csv", b"1\n")  # its ctime is now, whatever its mtime says
    fingerprints = DataFingerprints()
    await fingerprints.of(file, content=True)
    await fingerprints.of(file, content=True)
    assert len(read) == 2
    assert fingerprints.cached_files == 0


async def test_the_cache_keeps_the_most_recently_used_files(tmp_path: Path, read: list[str]) -> None:
    files = [write(tmp_path / "data" / f"{name}.csv", name.encode()) for name in "abcd"]
    fingerprints = DataFingerprints(max_cached_files=3, min_age_s=0)
    await fingerprints.of(tmp_path / "data", content=True)  # read in path order: a.csv goes first
    assert fingerprints.cached_files == 3
    read.clear()
    await fingerprints.of(files[3], content=True)
    assert read == []
    await fingerprints.of(files[0], content=True)
    assert read == [str(files[0])]


async def test_a_fifo_is_neither_file_nor_directory(tmp_path: Path) -> None:
    fingerprints = DataFingerprints()
    data = write(tmp_path / "data" / "a.csv", b"a\n").parent
    before = await both(fingerprints, data)
    os.mkfifo(data / "pipe")
    async with asyncio.timeout(10):
        assert await both(fingerprints, data) == before  # left out of a tree, never opened
        with pytest.raises(DataUnreadable, match="neither a regular file nor a directory"):
            await fingerprints.of(data / "pipe", content=True)
