"""A step's ``foreach`` in Pipeline documents: its three sources, its bounds, ``${item…}``, and the
problems of each, named at their lines."""

from __future__ import annotations

import pytest

from daemon.documents import Foreach, PipelineSpec
from daemon.documents.specs import OverFiles, OverItems, OverShards
from tests.unit.documents_helpers import parse, problems

HEAD = """\
kind: Pipeline
name: p
params:
  models: {type: list, default: [small, large]}
  date: {type: string}
steps:
  - name: up
    command: [x]
    outputs: [o]
  - name: s
    inputs:
      raw: {datastore: landing, path: "in/${params.date}"}
      upstream: ${steps.up.outputs.o}
"""


AT_FOREACH = "p.yaml:15 steps[1].foreach"


def foreach_of(step: str) -> Foreach | None:
    [document] = parse(HEAD + step)
    assert isinstance(document.spec, PipelineSpec)
    return document.spec.steps[-1].foreach


def test_files_with_its_defaults_and_with_every_option() -> None:
    minimal = foreach_of("    command: [x, '${item.files}']\n    foreach: {files: {input: raw}}\n")
    assert minimal == Foreach(over=OverFiles(input="raw", pattern="*", per=1))
    full = foreach_of(
        "    command: [x, '${item.files}']\n"
        "    env: {FILES: '${item.files}', INDEX: '${item.index}', RELATIVE: '${item}'}\n"
        "    foreach:\n"
        "      files: {input: raw, pattern: '**/*.csv', per: 10}\n"
        "      max_parallel: 4\n"
        "      allowed_failures: 12.5%\n"
    )
    assert full == Foreach(
        over=OverFiles(input="raw", pattern="**/*.csv", per=10), max_parallel=4, allowed_failures="12.5%"
    )


def test_items_of_a_list_param_and_shards() -> None:
    items = foreach_of(
        "    command: [x, '${item}']\n    foreach: {items: '${params.models}', allowed_failures: 1}\n"
    )
    assert items == Foreach(over=OverItems(param="models"), allowed_failures=1)
    shards = foreach_of("    command: [x, '--shard=${item.index}']\n    foreach: {shards: 8}\n")
    assert shards == Foreach(over=OverShards(count=8))


def test_a_step_without_foreach_has_none() -> None:
    assert foreach_of("    command: [x]\n") is None


@pytest.mark.parametrize(
    ("foreach", "message"),
    [
        ("{}", ": needs exactly one of files, items, shards"),
        (
            "{shards: 2, items: '${params.models}'}",
            ": needs exactly one of files, items, shards (found items, shards)",
        ),
        ("{shards: 0}", ".shards: expected an integer >= 1"),
        ("{shards: 2, max_parallel: 0}", ".max_parallel: expected an integer >= 1"),
        ("{shards: 2, allowed_failures: -1}", ".allowed_failures: expected an integer >= 0"),
        (
            "{shards: 2, allowed_failures: 101%}",
            ".allowed_failures: must be a count or a percentage from 0% to 100% such as '10%', not '101%'",
        ),
        (
            "{shards: 2, allowed_failures: half}",
            ".allowed_failures: must be a count or a percentage from 0% to 100% such as '10%', not 'half'",
        ),
        ("{shards: 2, each: 1}", ".each: unknown field"),
        ("{files: {input: raw, per: 0}}", ".files.per: expected an integer >= 1"),
        (
            "{files: {input: raw, pattern: ../*.csv}}",
            ".files.pattern: must be a glob relative to the input, without '..'",
        ),
        (
            "{files: {input: nope}}",
            ".files.input: the step has no input 'nope' (its inputs: raw, upstream)",
        ),
        (
            "{files: {input: upstream}}",
            ".files.input: input 'upstream' is an output of step 'up', not read from a datastore",
        ),
        (
            "{items: models}",
            ".items: must be ${params.NAME} naming a list param, not 'models'",
        ),
        ("{items: '${params.nope}'}", ".items: ${params.nope}: unknown param 'nope'"),
        (
            "{items: '${params.date}'}",
            ".items: ${params.date}: param 'date' must be of type list, not string",
        ),
    ],
)
def test_foreach_problems_name_their_line(foreach: str, message: str) -> None:
    assert problems(HEAD + f"    command: [x]\n    foreach: {foreach}\n") == [AT_FOREACH + message]


def test_item_references_need_a_foreach_step_in_argv_and_env() -> None:
    text = HEAD + "    command: [x, '${item}', '--i=${item.index}']\n    env: {FILES: '${item.files}'}\n"

    assert problems(text) == [
        "p.yaml:14 steps[1].command[1]: ${item}: the step has no foreach",
        "p.yaml:14 steps[1].command[2]: ${item.index}: the step has no foreach",
        "p.yaml:15 steps[1].env.FILES: ${item.files}: the step has no foreach",
    ]


def test_item_files_needs_a_foreach_over_files() -> None:
    text = HEAD + "    command: [x, '${item.files}']\n    foreach: {shards: 2}\n"

    assert problems(text) == [
        "p.yaml:14 steps[1].command[1]: ${item.files}: the step's foreach is over shards, not files"
    ]


def test_unknown_item_field_and_item_outside_argv_and_env() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: s
            command: [x, "${item.name}"]
            inputs:
              raw: {datastore: landing, path: "in/${item}"}
            foreach: {shards: 2}
    """

    found = problems(text)
    assert found[0].startswith("p.yaml:5 steps[0].command[1]: unknown substitution ${item.name} (use ")
    assert found[0].endswith(", item, item.index, item.files)")
    assert found[1].startswith("p.yaml:7 steps[0].inputs.raw.path: unknown substitution ${item} (use params")


def test_item_in_defaults_is_checked_in_each_step_and_foreach_is_no_default() -> None:
    text = """\
        kind: Pipeline
        name: p
        defaults:
          command: [x, "${item}"]
        steps:
          - name: once
          - name: fanned
            foreach: {shards: 2}
    """

    assert problems(text) == ["p.yaml:4 defaults.command[1]: ${item}: the step has no foreach (in step once)"]
    assert problems(text.replace("defaults:\n", "defaults:\n          foreach: {shards: 2}\n"))[0] == (
        "p.yaml:4 defaults.foreach: unknown field"
    )
