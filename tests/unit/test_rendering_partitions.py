"""Rendering one partition of a ``foreach`` step: ``${item}``, ``${item.index}``, ``${item.files}``."""

from __future__ import annotations

import json

import msgspec
import pytest

from daemon.documents.specs import PipelineSpec
from daemon.documents.template import TemplateError
from daemon.rules.partitions import Partition, files, items, shards
from daemon.rules.rendering import RunContext, render_step

RAW = {"from": "datastore", "datastore": "landing", "path": "in/${params.date}"}
DATASTORES = {"default": "/agent/default", "landing": "/agent/landing"}


def spec(foreach: dict[str, object], command: list[str], env: dict[str, str]) -> PipelineSpec:
    return msgspec.convert(
        {
            "name": "p",
            "params": {"date": {"type": "string"}, "models": {"type": "list"}},
            "steps": [
                {
                    "name": "score",
                    "command": command,
                    "env": env,
                    "inputs": {"raw": RAW},
                    "foreach": foreach,
                }
            ],
        },
        PipelineSpec,
    )


def run_of(pipeline: PipelineSpec) -> RunContext:
    params = {"date": "2024", "models": ["small", 2, True]}
    return RunContext(id="r1", pipeline="p", version=1, params=params, spec=pipeline, source_digest=None)


FILES = {"over": {"kind": "files", "input": "raw", "pattern": "*.csv", "per": 2}}


def test_item_files_as_a_whole_argv_item_is_one_item_per_file() -> None:
    pipeline = spec(FILES, ["score", "--in", "${item.files}", "--n=${item.index}", "$${item.files}"], {})
    [first, second] = files(["a.csv", "sub/b.csv", "c.csv"], per=2)

    rendered = render_step(run_of(pipeline), pipeline.steps[0], DATASTORES, first)

    assert rendered.argv == [
        "score",
        "--in",
        "/agent/landing/in/2024/a.csv",
        "/agent/landing/in/2024/c.csv",
        "--n=0",
        "${item.files}",
    ]
    last = render_step(run_of(pipeline), pipeline.steps[0], DATASTORES, second)
    assert last.argv[2:4] == ["/agent/landing/in/2024/sub/b.csv", "--n=1"]


def test_item_files_in_env_or_inside_text_is_json_and_item_is_the_relative_files() -> None:
    env = {"FILES": "${item.files}", "ITEM": "${item}", "INDEX": "${item.index}"}
    pipeline = spec(FILES, ["score", "--files=${item.files}"], env)
    partition = Partition(3, files=("a b.csv", "é.csv"))

    rendered = render_step(run_of(pipeline), pipeline.steps[0], DATASTORES, partition)

    paths = ["/agent/landing/in/2024/a b.csv", "/agent/landing/in/2024/é.csv"]
    assert json.loads(rendered.env["FILES"]) == paths
    assert rendered.argv[1] == "--files=" + rendered.env["FILES"]
    assert json.loads(rendered.env["ITEM"]) == ["a b.csv", "é.csv"]
    assert rendered.env["INDEX"] == "3"


def test_an_item_reads_as_a_param_and_a_shard_as_its_index() -> None:
    pipeline = spec({"over": {"kind": "items", "param": "models"}}, ["fit", "${item}", "${item.index}"], {})
    run = run_of(pipeline)
    partitions = items(run.params["models"])
    texts = [render_step(run, pipeline.steps[0], DATASTORES, part).argv[1:] for part in partitions]
    assert texts == [["small", "0"], ["2", "1"], ["true", "2"]]
    sharded = spec({"over": {"kind": "shards", "count": 4}}, ["x", "--shard=${item}/${item.index}"], {})
    rendered = render_step(run_of(sharded), sharded.steps[0], DATASTORES, shards(4)[2])
    assert rendered.argv == ["x", "--shard=2/2"]


def test_without_a_partition_a_foreach_step_renders_as_before() -> None:
    pipeline = spec(FILES, ["score", "${params.date}"], {"WHEN": "${run.id}"})

    rendered = render_step(run_of(pipeline), pipeline.steps[0], DATASTORES)

    assert rendered.argv == ["score", "2024"]
    assert rendered.env["WHEN"] == "r1"


def test_item_files_has_no_value_outside_a_foreach_over_files() -> None:
    pipeline = spec({"over": {"kind": "shards", "count": 2}}, ["x", "${item.files}"], {})

    with pytest.raises(TemplateError, match="no value for"):
        render_step(run_of(pipeline), pipeline.steps[0], DATASTORES, shards(2)[0])


@pytest.mark.parametrize("name", ["../escape.csv", "/etc/passwd", "a/../../b.csv", ""])
def test_a_partition_file_outside_its_input_cannot_render(name: str) -> None:
    pipeline = spec(FILES, ["x", "${item.files}"], {})

    with pytest.raises(TemplateError, match="is not inside its input"):
        render_step(run_of(pipeline), pipeline.steps[0], DATASTORES, Partition(0, files=(name,)))


def test_a_partition_of_a_step_without_foreach_is_a_mistake() -> None:
    pipeline = spec(FILES, ["x"], {})
    plain = msgspec.structs.replace(pipeline.steps[0], foreach=None)

    with pytest.raises(ValueError, match="has no foreach"):
        render_step(run_of(pipeline), plain, DATASTORES, Partition(0))
