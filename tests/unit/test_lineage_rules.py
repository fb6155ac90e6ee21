"""Lineage's pure parts: path cleaning, what "under a path" covers (at a path boundary), where an
output lies, and a step's inputs as recorded."""

from __future__ import annotations

import pytest

from daemon.documents.specs import Foreach, FromDatastore, FromStep, OverFiles, PipelineSpec, StepSpec
from daemon.rules.lineage import (
    BadPath,
    OutputOf,
    StepInput,
    ancestors,
    below,
    clean_path,
    output_of,
    step_inputs,
)
from daemon.rules.partitions import Partition
from daemon.rules.rendering import RunContext, run_values

RUN = "0b7c9d1e-2f3a-4b5c-8d6e-7f8091a2b3c4"
EARLIER = "11111111-2222-4333-8444-555555555555"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("data/day1", "data/day1"), ("data//day1/./", "data/day1"), (".", ""), ("", ""), ("a/b/../c", None)],
)
def test_paths_are_cleaned_and_never_leave_the_datastore(raw: str, clean: str | None) -> None:
    if clean is None:
        with pytest.raises(BadPath, match=r"'\.\.' part"):
            clean_path(raw)
    else:
        assert clean_path(raw) == clean


def test_absolute_paths_and_nul_are_refused() -> None:
    with pytest.raises(BadPath, match="absolute"):
        clean_path("/etc/passwd")
    with pytest.raises(BadPath, match="NUL"):
        clean_path("a\0b")


def under(path: str, candidate: str) -> bool:
    """What the store's range query answers, in byte order (collation "C")."""
    bounds = below(path)
    return bounds is None or bounds[0] <= candidate < bounds[1]


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ("data/a/x.csv", True),
        ("data/a/b/c", True),
        ("data/a/", True),
        ("data/ab", False),
        ("data/a-b/x", False),
        ("data/a.csv", False),
        ("data/a0", False),
        ("data/a", False),  # the path itself is an equality, not a range
        ("data", False),
        ("data/b", False),
        ("data/a\U0010ffff", False),
    ],
)
def test_below_matches_at_a_path_boundary_only(candidate: str, expected: bool) -> None:
    assert under("data/a", candidate) is expected
    # The store compares in byte order: the same answer on UTF-8 bytes.
    low, high = below("data/a")  # type: ignore[misc]
    assert (low.encode() <= candidate.encode() < high.encode()) is expected


def test_below_the_root_is_everything() -> None:
    assert below("") is None
    assert under("", "anything/at/all")


def test_ancestors_are_the_directories_holding_a_path() -> None:
    assert ancestors("a/b/c.csv") == ["", "a", "a/b"]
    assert ancestors("a") == [""]
    assert ancestors("") == []


@pytest.mark.parametrize(
    ("datastore", "path", "expected"),
    [
        ("default", f"runs/{RUN}/prep/features", OutputOf(RUN, "prep", "features")),
        ("default", f"runs/{RUN}/prep/features/x/y.parquet", OutputOf(RUN, "prep", "features")),
        ("default", f"runs/{RUN}/score/out/part-00003", OutputOf(RUN, "score[3]", "out")),
        ("default", f"runs/{RUN}/score/out/part-00003/a.csv", OutputOf(RUN, "score[3]", "out")),
        ("default", f"runs/{RUN}/prep/logs/attempt-1.log", None),
        ("default", f"runs/{RUN}/prep", None),
        ("default", f"runs/{RUN}", None),
        ("default", "runs/not-a-run/prep/out", None),
        ("default", f"runs/{'0' * 36}/prep/out", None),  # 36 characters, not a run id
        ("landing", f"runs/{RUN}/prep/features", None),
    ],
)
def test_where_a_path_lies_in_the_outputs(datastore: str, path: str, expected: OutputOf | None) -> None:
    assert output_of(datastore, path) == expected


def context(reused: dict[str, tuple[str, str]] | None = None) -> RunContext:
    steps = [
        StepSpec(
            name="a",
            command=["a"],
            inputs={"raw": FromDatastore(datastore="landing", path="data/${params.day}/")},
            outputs=["out"],
        ),
        StepSpec(
            name="b",
            command=["b"],
            inputs={
                "x": FromStep(step="a", output="out"),
                "raw": FromDatastore(datastore="landing", path="../${params.day}"),
            },
        ),
    ]
    spec = PipelineSpec(name="p", steps=steps)
    return RunContext(RUN, "p", 1, {"day": "day1"}, spec, None, reused=reused or {})


def test_a_step_s_inputs_carry_the_fingerprints_its_own_took() -> None:
    run = context()
    [a, b] = run.spec.steps
    values = run_values(run)
    assert step_inputs(run, a, {"input raw": "sha256:d1"}, values) == [
        StepInput("raw", "landing", "data/day1", "sha256:d1")
    ]
    # An input rendered outside its datastore is left out: it cannot be read, and reuse says why.
    assert step_inputs(run, b, {"input x": "sha256:fa out"}, values) == [
        StepInput("x", "default", f"runs/{RUN}/a/out", "sha256:fa out", None, RUN, "a", "out")
    ]


def test_an_input_from_a_reused_step_comes_from_the_run_it_links() -> None:
    run = context({"a": (EARLIER, "a")})
    [item] = step_inputs(run, run.spec.steps[1], {}, run_values(run))
    assert (item.path, item.from_run, item.from_step) == (f"runs/{EARLIER}/a/out", EARLIER, "a")


def test_a_partition_over_files_records_its_own_files() -> None:
    step = StepSpec(
        name="score",
        command=["s"],
        inputs={"raw": FromDatastore(datastore="landing", path="data")},
        foreach=Foreach(over=OverFiles(input="raw", pattern="*.csv")),
    )
    run = context()
    partition = Partition(index=2, files=("a.csv", "b.csv"))
    [item] = step_inputs(run, step, {"input raw": "sha256:part"}, run_values(run), partition)
    assert item == StepInput("raw", "landing", "data", "sha256:part", ("a.csv", "b.csv"))
