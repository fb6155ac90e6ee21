"""Source snapshots: deterministic digests and archives, verification and extraction."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import pytest

from daemon.documents.source import SourceError, archive_digest, extract_snapshot, snapshot_directory


def write_tree(root: Path, files: dict[str, str], *, executable: tuple[str, ...] = ()) -> Path:
    """``files`` (relative path -> text) under ``root``, in the order given."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755 if name in executable else 0o644)
    return root


TREE = {"main.py": "print('hi')\n", "lib/util.py": "X = 1\n", "run.sh": "#!/bin/sh\n"}


def tree(root: Path) -> Path:
    return write_tree(root, TREE, executable=("run.sh",))


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, content in members:
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def file_member(
    name: str, content: bytes, *, mode: int = 0o644, mtime: int = 0
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = mtime
    return info, content


# Digest


def test_snapshot_counts_files_and_bytes(tmp_path: Path) -> None:
    snapshot = snapshot_directory(tree(tmp_path / "src"))

    assert re.fullmatch(r"sha256:[0-9a-f]{64}", snapshot.digest)
    assert (snapshot.files, snapshot.size) == (3, sum(len(text) for text in TREE.values()))


def test_same_tree_same_digest_whatever_the_mtimes_creation_order_and_directory_name(tmp_path: Path) -> None:
    first = tree(tmp_path / "one")
    second = write_tree(tmp_path / "two", dict(reversed(TREE.items())), executable=("run.sh",))
    os.utime(second / "main.py", (1_000_000, 1_000_000))

    one, two = snapshot_directory(first), snapshot_directory(second)

    assert one.digest == two.digest
    assert one.archive == two.archive


def test_digest_changes_with_content_exec_bit_and_names(tmp_path: Path) -> None:
    base = snapshot_directory(tree(tmp_path / "base")).digest
    content = tree(tmp_path / "content")
    (content / "lib/util.py").write_text("X = 2\n")
    mode = tree(tmp_path / "mode")
    (mode / "main.py").chmod(0o755)
    renamed = tree(tmp_path / "renamed")
    (renamed / "main.py").rename(renamed / "app.py")

    digests = {snapshot_directory(path).digest for path in (content, mode, renamed)}

    assert base not in digests
    assert len(digests) == 3


def test_other_mode_bits_and_empty_directories_do_not_count(tmp_path: Path) -> None:
    base = snapshot_directory(tree(tmp_path / "base")).digest
    other = tree(tmp_path / "other")
    (other / "main.py").chmod(0o600)
    (other / "empty").mkdir()

    assert snapshot_directory(other).digest == base


def test_pycache_and_git_directories_are_skipped(tmp_path: Path) -> None:
    base = snapshot_directory(tree(tmp_path / "base"))
    noisy = tree(tmp_path / "noisy")
    write_tree(
        noisy, {"__pycache__/main.cpython-311.pyc": "x", ".git/HEAD": "ref", "lib/__pycache__/u.pyc": "y"}
    )

    snapshot = snapshot_directory(noisy)

    assert (snapshot.digest, snapshot.files) == (base.digest, 3)


def test_a_git_file_of_a_worktree_is_skipped(tmp_path: Path) -> None:
    base = snapshot_directory(tree(tmp_path / "base"))
    worktree = tree(tmp_path / "worktree")
    write_tree(worktree, {".git": "gitdir: /elsewhere/.git/worktrees/w"})

    assert snapshot_directory(worktree).digest == base.digest


def test_symlinks_are_stored_not_followed(tmp_path: Path) -> None:
    outside = write_tree(tmp_path / "outside", {"secret.txt": "s"})
    source = tree(tmp_path / "src")
    (source / "current").symlink_to("lib")
    (source / "data").symlink_to(outside)
    before = snapshot_directory(source)
    (outside / "more.txt").write_text("more")

    after = snapshot_directory(source)

    with tarfile.open(fileobj=io.BytesIO(after.archive)) as tar:
        links = {member.name: member.linkname for member in tar if member.issym()}
    assert links == {"current": "lib", "data": str(outside)}
    assert (after.files, after.size) == (5, sum(len(text) for text in TREE.values()))
    assert after.digest == before.digest


def test_digest_changes_with_a_symlink_target(tmp_path: Path) -> None:
    first = tree(tmp_path / "first")
    (first / "current").symlink_to("lib")
    second = tree(tmp_path / "second")
    (second / "current").symlink_to("main.py")

    assert snapshot_directory(first).digest != snapshot_directory(second).digest


def test_archive_is_sorted_with_fixed_metadata(tmp_path: Path) -> None:
    snapshot = snapshot_directory(tree(tmp_path / "src"))

    with tarfile.open(fileobj=io.BytesIO(snapshot.archive)) as tar:
        members = [(m.name, m.mode, m.mtime, m.uid, m.gid, m.uname) for m in tar]

    assert members == [
        ("lib/util.py", 0o644, 0, 0, 0, ""),
        ("main.py", 0o644, 0, 0, 0, ""),
        ("run.sh", 0o755, 0, 0, 0, ""),
    ]


def test_missing_directory_or_a_file_raise_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        snapshot_directory(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceError, match="is not a directory"):
        snapshot_directory(tmp_path / "file")


def test_special_files_are_refused(tmp_path: Path) -> None:
    source = tree(tmp_path / "src")
    os.mkfifo(source / "pipe")

    with pytest.raises(SourceError, match="neither a file, a directory nor a symlink"):
        snapshot_directory(source)


def test_max_bytes_is_enforced(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", {"a": "12345", "b/c": "67890"})

    assert snapshot_directory(source, max_bytes=10).size == 10
    with pytest.raises(SourceError, match="holds more than 9 bytes"):
        snapshot_directory(source, max_bytes=9)


# Verification


def test_archive_digest_of_a_snapshot_is_its_digest(tmp_path: Path) -> None:
    source = tree(tmp_path / "src")
    (source / "link").symlink_to("main.py")
    snapshot = snapshot_directory(source)

    assert archive_digest(snapshot.archive) == snapshot.digest


def test_archive_digest_ignores_order_timestamps_and_directory_entries(tmp_path: Path) -> None:
    snapshot = snapshot_directory(write_tree(tmp_path / "src", {"a.txt": "A", "d/b.txt": "B"}))
    directory = tarfile.TarInfo("d")
    directory.type = tarfile.DIRTYPE
    archive = tar_of(
        [
            (directory, None),
            file_member("./d/b.txt", b"B", mode=0o600, mtime=12345),
            file_member("a.txt", b"A", mtime=999),
        ]
    )

    assert archive_digest(archive) == snapshot.digest


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (b"", "bad source archive"),
        (b"this is not a tar archive" * 40, "bad source archive"),
        (tar_of([file_member("/etc/passwd", b"x")]), "unsafe path '/etc/passwd'"),
        (tar_of([file_member("../escape", b"x")]), "unsafe path '../escape'"),
        (tar_of([file_member("a/../../escape", b"x")]), "unsafe path 'a/../../escape'"),
        (tar_of([file_member("a", b"x"), file_member("./a", b"y")]), "holds a twice"),
    ],
    ids=["empty", "not-tar", "absolute", "dotdot", "nested-dotdot", "twice"],
)
def test_archive_digest_refuses_bad_archives(archive: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=re.escape(message)):
        archive_digest(archive)


def test_archive_digest_refuses_hard_links() -> None:
    link = tarfile.TarInfo("b")
    link.type = tarfile.LNKTYPE
    link.linkname = "a"

    with pytest.raises(SourceError, match="neither a file nor a symlink"):
        archive_digest(tar_of([file_member("a", b"x"), (link, None)]))


# Extraction


def test_extract_snapshot_round_trips(tmp_path: Path) -> None:
    source = tree(tmp_path / "src")
    (source / "link").symlink_to("lib/util.py")
    snapshot = snapshot_directory(source)

    extract_snapshot(snapshot.archive, tmp_path / "out" / "deep")

    out = tmp_path / "out" / "deep"
    assert snapshot_directory(out).digest == snapshot.digest
    assert (out / "lib/util.py").read_text() == "X = 1\n"
    assert os.access(out / "run.sh", os.X_OK)
    assert os.readlink(out / "link") == "lib/util.py"


def test_extract_refuses_links_out_of_the_destination(tmp_path: Path) -> None:
    source = tree(tmp_path / "src")
    (source / "passwd").symlink_to("/etc/passwd")

    with pytest.raises(SourceError, match="bad source archive"):
        extract_snapshot(snapshot_directory(source).archive, tmp_path / "out")


def test_extract_refuses_paths_out_of_the_destination(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="bad source archive"):
        extract_snapshot(tar_of([file_member("../escape", b"x")]), tmp_path / "out")

    assert not (tmp_path / "escape").exists()
