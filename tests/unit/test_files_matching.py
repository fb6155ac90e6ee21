"""Glob patterns of files triggers, matched against paths relative to the datastore."""

from __future__ import annotations

import fnmatch

import pytest

from triggers.files.matching import Matcher, compile_glob, relative
from triggers.files.watch import fs_type, is_remote_fs


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.csv", "a.csv", True),
        ("*.csv", "dir/a.csv", False),
        ("*.csv", ".hidden.csv", True),
        ("*.csv", "a.csv.tmp", False),
        ("**/*.csv", "a.csv", True),
        ("**/*.csv", "x/y/z/a.csv", True),
        ("**/*.csv", "x/y/a.txt", False),
        ("incoming/**/*.csv", "incoming/a.csv", True),
        ("incoming/**/*.csv", "incoming/2024/05/a.csv", True),
        ("incoming/**/*.csv", "other/incoming/a.csv", False),
        ("incoming/**/*.csv", "incoming.csv", False),
        ("incoming/**", "incoming/a", True),
        ("incoming/**", "incoming/a/b", True),
        ("incoming/**", "incoming", False),
        ("**", "anything/at/all", True),
        ("a/**/**/b.csv", "a/b.csv", True),
        ("a/**/b.csv", "a/x/y/b.csv", True),
        ("a/**/b.csv", "a/xb.csv", False),
        ("day-??.csv", "day-01.csv", True),
        ("day-??.csv", "day-1.csv", False),
        ("day-?.csv", "day-/.csv", False),
        ("[ab].csv", "a.csv", True),
        ("[ab].csv", "c.csv", False),
        ("[!ab].csv", "c.csv", True),
        ("[^ab].csv", "a.csv", False),
        ("[a-c]x.csv", "bx.csv", True),
        ("[]]x", "]x", True),
        ("[!/]x", "/x", False),
        ("[a", "[a", True),
        ("a+b(1).csv", "a+b(1).csv", True),
        ("a.csv", "abcsv", False),
        ("./incoming//*.csv", "incoming/a.csv", True),
        ("/incoming/*.csv", "incoming/a.csv", True),
        ("*", "a/b", False),
        ("data/*/part-*.parquet", "data/2024/part-0001.parquet", True),
        ("data/*/part-*.parquet", "data/2024/x/part-0001.parquet", False),
        ("A.CSV", "a.csv", False),
        ("name with space.csv", "name with space.csv", True),
        ("ünïcode/*.csv", "ünïcode/é.csv", True),
    ],
)
def test_glob(pattern: str, path: str, expected: bool) -> None:
    assert (compile_glob(pattern).fullmatch(path) is not None) is expected


@pytest.mark.parametrize("pattern", ["*.csv", "a?c", "[abc]*", "[!x]y*", "x*y*z", "*[0-9]"])
@pytest.mark.parametrize("name", ["a.csv", "abc", "bcd", "xyz", "xayz", "q1", "x.y.z", ".csv", ""])
def test_single_segment_patterns_agree_with_fnmatch(pattern: str, name: str) -> None:
    assert (compile_glob(pattern).fullmatch(name) is not None) is fnmatch.fnmatchcase(name, pattern)


def test_matcher_works_on_absolute_paths() -> None:
    matcher = Matcher("/data/landing", "in/**/*.csv")
    assert matcher.match_abs("/data/landing/in/x/a.csv") == "in/x/a.csv"
    assert matcher.match_abs("/data/landing/in/a.txt") is None
    assert matcher.match_abs("/data/other/in/a.csv") is None
    assert matcher.match_abs("/data/landing") is None
    assert relative("/data/landing", "/data/landing-2/a.csv") is None


MOUNTINFO = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /mnt/nfs rw,relatime shared:2 - nfs4 server:/export rw,vers=4.2
31 30 0:41 / /mnt/nfs/local rw shared:3 - tmpfs tmpfs rw
32 22 0:42 / /mnt/with\040space rw - cifs //srv/share rw
33 22 0:43 / /mnt/ssh rw - fuse.sshfs host: rw
34 22 0:44 / /mnt/nfsish rw - ext4 /dev/sdb1 rw
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/home/me/data", "ext4"),
        ("/mnt/nfs", "nfs4"),
        ("/mnt/nfs/landing", "nfs4"),
        ("/mnt/nfs/local/x", "tmpfs"),
        ("/mnt/with space/landing", "cifs"),
        ("/mnt/ssh/x", "fuse.sshfs"),
        ("/mnt/nfsish/x", "ext4"),
    ],
)
def test_fs_type_from_mountinfo(path: str, kind: str) -> None:
    assert fs_type(path, MOUNTINFO) == kind


def test_remote_file_systems_are_polled() -> None:
    assert is_remote_fs("nfs4")
    assert is_remote_fs("cifs")
    assert is_remote_fs("fuse.sshfs")
    assert not is_remote_fs("ext4")
    assert not is_remote_fs("fuseblk")
    assert not is_remote_fs(None)
