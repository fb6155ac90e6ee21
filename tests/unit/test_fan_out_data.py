"""A foreach step's file partitions as planning sees them: listed, matched, cut sticky, and each
fingerprinted over its own files only (real files in a temporary directory)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from daemon.planning.data_fingerprints import DataFingerprints
from triggers.files.matching import compile_glob

CSV = compile_glob("*.csv").fullmatch


def land(root: Path, names: range) -> None:
    for number in names:
        (root / f"part-{number:03d}.csv").write_text(f"rows of {number}\n")


def plan(root: Path, previous=None) -> dict[int, tuple[tuple[str, ...], str]]:
    made = asyncio.run(
        DataFingerprints().partitions(str(root), lambda rel: CSV(rel) is not None, 10, previous)
    )
    return {partition.index: (partition.files, fingerprint) for partition, fingerprint in made}


def test_matching_files_are_cut_into_partitions_each_with_its_own_fingerprint(tmp_path: Path) -> None:
    land(tmp_path, range(25))
    (tmp_path / "notes.txt").write_text("not a csv")
    made = plan(tmp_path)
    assert [len(files) for files, _ in made.values()] == [10, 10, 5]
    assert len({fingerprint for _, fingerprint in made.values()}) == 3


def test_a_changed_file_changes_only_its_own_partitions_fingerprint(tmp_path: Path) -> None:
    land(tmp_path, range(25))
    first = plan(tmp_path)
    changed = tmp_path / "part-013.csv"
    changed.write_text("new rows, another size\n")
    second = plan(tmp_path, {index: files for index, (files, _) in first.items()})
    assert [index for index in first if first[index][1] != second[index][1]] == [1]


def test_new_files_leave_the_other_partitions_as_they_were(tmp_path: Path) -> None:
    land(tmp_path, range(100))
    first = plan(tmp_path)
    land(tmp_path, range(100, 105))
    second = plan(tmp_path, {index: files for index, (files, _) in first.items()})
    assert {index for index in second if first.get(index) != second[index]} == {10}
    os.utime(tmp_path / "part-050.csv", ns=(1, 1))
    third = plan(tmp_path, {index: files for index, (files, _) in second.items()})
    assert {index for index in third if second[index] != third[index]} == {5}


def test_nothing_at_the_path_is_no_partition(tmp_path: Path) -> None:
    assert plan(tmp_path / "not-there") == {}
