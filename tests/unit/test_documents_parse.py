"""parse_documents: the contract's examples, YAML reading, structure, and how problems are reported."""

from __future__ import annotations

from textwrap import dedent

import pytest

from daemon.documents import (
    DatastoreSpec,
    DocumentErrors,
    PipelineSpec,
    Problem,
    SourceText,
    TriggerSpec,
    parse_documents,
)
from daemon.documents.specs import Concurrency, FromDatastore, FromStep, ParamSpec, Resources
from tests.unit.documents_helpers import parse, problems

CONTRACT_PIPELINE = """\
kind: Pipeline
name: batch-scoring
description: Score the customers of one day
params:                      # typed parameters: string | integer | number | boolean
  date:  {type: string}      # no default = required
  model: {type: string, default: prod}
source: ./scoring            # directory snapshotted into the version (relative to this file); optional
concurrency: {max_active_runs: 1, on_limit: queue}   # queue | skip ; optional
defaults: {retries: 1, timeout: 1h}                   # any step field; optional
steps:
  - name: prep
    command: [python, prep.py, --date, "${params.date}", --out, "${outputs.features}"]
    inputs:
      raw: {datastore: landing, path: "customers/${params.date}"}
    outputs: [features]
    resources: {cpu: 2, memory: 4Gi}
  - name: score
    image: registry.example.com/scoring:1.4       # with image: runs in Docker; without: a process
    command: [python, score.py, --in, "${inputs.features}", --model, "${params.model}",
              --out, "${outputs.scores}"]
    inputs:
      features: ${steps.prep.outputs.features}    # data dependency = graph edge
    outputs: [scores]
    resources: {cpu: 4, memory: 16Gi, gpu: 1, gpu_memory: 20Gi}
    selector: {zone: eu}     # agent labels that must match
    after: []                # extra ordering edges without data
    env: {LOG_LEVEL: info}
    retries: 2               # attempts after the first failure
    timeout: 30m
    reuse: true              # default true
"""

CONTRACT_TRIGGER = """\
kind: Trigger
name: nightly-scoring
pipeline: batch-scoring
version: 3                    # optional pin
on:                           # exactly one source
  cron: "0 2 * * *"           # 5 fields, or 6 with seconds
  timezone: Europe/Madrid     # default UTC
  catchup: latest             # none | latest | all — fires missed while no daemon ran
params:
  date: "${event.scheduled_date}"
"""

DATASTORE = """\
kind: Datastore
name: landing
type: local
path: /data/landing
"""


def test_contract_pipeline_parses_with_defaults_merged_and_units_normalised() -> None:
    [document] = parse(CONTRACT_PIPELINE, "pipeline.yaml")

    assert (document.kind, document.name, document.file, document.line) == (
        "Pipeline",
        "batch-scoring",
        "pipeline.yaml",
        1,
    )
    spec = document.spec
    assert isinstance(spec, PipelineSpec)
    assert spec.params == {
        "date": ParamSpec(type="string"),
        "model": ParamSpec(type="string", default="prod"),
    }
    assert spec.params["date"].required
    assert not spec.params["model"].required
    assert spec.source == "./scoring"
    assert spec.concurrency == Concurrency(max_active_runs=1, on_limit="queue")
    prep, score = spec.steps
    assert prep.inputs == {"raw": FromDatastore(datastore="landing", path="customers/${params.date}")}
    assert prep.resources == Resources(cpu=2.0, memory=4294967296)
    assert (prep.retries, prep.timeout, prep.image, prep.reuse) == (1, 3600.0, None, True)
    assert score.inputs == {"features": FromStep(step="prep", output="features")}
    assert score.resources == Resources(cpu=4.0, memory=16 * 1024**3, gpu=1, gpu_memory=20 * 1024**3)
    assert (score.retries, score.timeout) == (2, 1800.0)
    assert score.image == "registry.example.com/scoring:1.4"
    assert score.selector == {"zone": "eu"}
    assert score.env == {"LOG_LEVEL": "info"}


def test_contract_trigger_parses() -> None:
    [document] = parse(CONTRACT_TRIGGER)

    spec = document.spec
    assert isinstance(spec, TriggerSpec)
    assert (spec.pipeline, spec.version, spec.source) == ("batch-scoring", 3, "cron")
    assert (spec.on.cron, spec.on.timezone, spec.on.catchup) == ("0 2 * * *", "Europe/Madrid", "latest")
    assert spec.params == {"date": "${event.scheduled_date}"}


def test_contract_datastore_parses() -> None:
    [document] = parse(DATASTORE)

    assert document.spec == DatastoreSpec(name="landing", type="local", path="/data/landing")


def test_documents_of_several_files_and_separators_come_back_in_order() -> None:
    texts = [
        SourceText("one.yaml", DATASTORE + "---\n" + CONTRACT_TRIGGER),
        SourceText("two.yaml", CONTRACT_PIPELINE),
    ]

    documents = parse_documents(texts)

    assert [(d.file, d.line, d.kind) for d in documents] == [
        ("one.yaml", 1, "Datastore"),
        ("one.yaml", 6, "Trigger"),
        ("two.yaml", 1, "Pipeline"),
    ]


def test_empty_documents_are_skipped() -> None:
    assert [d.line for d in parse("---\n# nothing here\n---\n" + DATASTORE + "---\n")] == [4]
    assert parse_documents([SourceText("empty.yaml", "")]) == []


def test_api_version_is_optional_and_only_sluice_v1_is_accepted() -> None:
    assert parse("apiVersion: sluice/v1\n" + DATASTORE)[0].name == "landing"

    assert problems("apiVersion: sluice/v2\n" + DATASTORE) == ["p.yaml:1 apiVersion: must be sluice/v1"]


def test_datastore_path_must_be_absolute() -> None:
    text = """\
        kind: Datastore
        name: landing
        path: data/landing
    """

    assert problems(text) == ["p.yaml:3 path: must be an absolute path"]


# YAML reading


def test_on_is_a_key_and_yes_no_stay_strings_and_numbers_are_decimal() -> None:
    text = """\
        kind: Pipeline
        name: p
        params:
          answer: {type: string, default: yes}
          other: {type: string, default: no}
        steps:
          - name: a
            command: [x, "1"]
            env: {AT: 1:30, FLAG: on}
            retries: 010
    """

    [document] = parse(text)

    spec = document.spec
    assert spec.params["answer"].default == "yes"
    assert spec.params["other"].default == "no"
    assert spec.steps[0].env == {"AT": "1:30", "FLAG": "on"}
    assert spec.steps[0].retries == 10
    # and `on:` as a key of a trigger (a boolean key in YAML 1.1) works too:
    assert parse(CONTRACT_TRIGGER)[0].spec.source == "cron"


def test_only_true_and_false_are_booleans() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            reuse: yes
    """

    assert problems(text) == ["p.yaml:6 steps[0].reuse: expected a boolean, got a string"]


def test_yaml_syntax_error_names_the_line() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
          command: [x]
    """

    [problem] = problems(text)

    assert problem.startswith("p.yaml:5: YAML syntax error: ")


def test_syntax_error_keeps_the_documents_before_it_and_their_problems() -> None:
    text = """\
        kind: Datastore
        name: BAD
        path: /x
        ---
        steps: [
    """

    found = problems(text)

    assert found[0] == (
        "p.yaml:2 name: bad name 'BAD' (use a-z, 0-9 and '-', starting with a letter or digit, at most 63)"
    )
    assert found[1].startswith("p.yaml:6: YAML syntax error: ")
    assert len(found) == 2


def test_duplicate_keys_are_rejected_with_both_lines() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            command: [y]
    """

    assert problems(text) == ["p.yaml:6 steps[0].command: duplicate key 'command' (first at line 5)"]


def test_keys_must_be_strings() -> None:
    assert problems(DATASTORE + "1: one\n") == ["p.yaml:5: key 1 must be a string (quote it)"]


def test_a_document_must_be_a_mapping() -> None:
    assert problems("- a\n- b\n") == ["p.yaml:1: a document must be a mapping with kind and name"]


def test_recursive_alias_is_a_problem_not_a_crash() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps: &steps
          - name: a
            command: *steps
    """

    assert "p.yaml:5 steps[0].command: an alias refers to a node that contains it" in problems(text)


def test_nesting_too_deep_is_a_problem_not_a_crash() -> None:
    text = DATASTORE + "---\nkey: " + "[" * 5000 + "]" * 5000 + "\n"

    assert problems(text) == ["p.yaml: YAML nests too deeply"]


# Structure


def test_unknown_key_is_named_by_its_path() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            resources: {cpu: 1, gpus: 2}
    """

    assert problems(text) == ["p.yaml:6 steps[0].resources.gpus: unknown field"]


def test_every_bad_key_is_reported_at_once_along_with_the_semantic_problems() -> None:
    text = """\
        kind: Pipeline
        name: p
        colour: red
        steps:
          - name: a
            command: "python a.py"
            retries: many
            resources: {cpu: 1, gpus: 2, gpu_memory: 4Gi}
          - name: b
            command: [x, "${params.nope}"]
    """

    assert problems(text) == [
        "p.yaml:3 colour: unknown field",
        "p.yaml:6 steps[0].command: expected a list, got a string",
        "p.yaml:7 steps[0].retries: expected an integer, got a string",
        "p.yaml:8 steps[0].resources.gpus: unknown field",
        "p.yaml:8 steps[0].resources.gpu_memory: needs gpu",
        "p.yaml:10 steps[1].command[1]: ${params.nope}: unknown param 'nope'",
    ]


def test_unknown_top_level_key() -> None:
    assert problems(DATASTORE + "colour: red\n") == ["p.yaml:5 colour: unknown field"]


def test_missing_required_fields() -> None:
    assert problems("kind: Pipeline\nname: p\n") == ["p.yaml:1 steps: missing"]
    assert problems("kind: Datastore\npath: /x\n") == ["p.yaml:1 name: missing"]
    assert problems("name: x\npath: /x\n") == ["p.yaml:1 kind: missing (use Pipeline, Trigger, Datastore)"]


def test_unknown_kind() -> None:
    assert problems("kind: Job\nname: x\n") == [
        "p.yaml:1 kind: unknown kind 'Job' (use Pipeline, Trigger, Datastore)"
    ]


def test_wrong_types_name_what_was_expected() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            outputs: [o, 1]
    """

    assert problems(text) == ["p.yaml:6 steps[0].outputs[1]: expected a string, got an integer"]


def test_wrong_type_inside_a_mapping_names_the_key() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            inputs:
              first: ${steps.b.outputs.o}
              second: {datastore: 1, path: x}
    """

    assert problems(text) == [
        "p.yaml:7 steps[0].inputs.first: unknown step 'b'",  # the rest is still checked
        "p.yaml:8 steps[0].inputs.second.datastore: expected a string, got an integer",
    ]


def test_a_name_that_yaml_reads_as_a_number_must_be_quoted() -> None:
    assert problems("kind: Datastore\nname: 2024\npath: /x\n") == ["p.yaml:2 name: must be a string"]
    assert parse("kind: Datastore\nname: '2024'\npath: /x\n")[0].name == "2024"


@pytest.mark.parametrize("name", ["Landing", "-landing", "land_ing", "a" * 64, ""])
def test_bad_document_names(name: str) -> None:
    [problem] = problems(f"kind: Datastore\nname: '{name}'\npath: /x\n")

    assert problem.startswith(f"p.yaml:2 name: bad name {name!r} (use a-z, 0-9 and '-'")


def test_longest_good_name() -> None:
    assert parse(f"kind: Datastore\nname: {'a' * 63}\npath: /x\n")[0].name == "a" * 63


# Reporting


def test_problem_format_is_file_line_path_message() -> None:
    assert str(Problem("p.yaml", 14, "steps[1].resources.gpu_memory", "needs gpu")) == (
        "p.yaml:14 steps[1].resources.gpu_memory: needs gpu"
    )
    assert str(Problem("p.yaml", None, "", "YAML syntax error: x")) == "p.yaml: YAML syntax error: x"
    assert str(Problem("p.yaml", 3, "", "a document must be a mapping")) == (
        "p.yaml:3: a document must be a mapping"
    )


def test_several_problems_across_files_are_all_reported_by_file_then_line() -> None:
    first = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            after: [nope]
            timeout: 0
          - name: A
            command: [x]
    """
    second = "kind: Datastore\nname: d\npath: relative\n"
    texts = [SourceText("a.yaml", dedent(first)), SourceText("b.yaml", second)]

    with pytest.raises(DocumentErrors) as caught:
        parse_documents(texts)

    assert [str(problem) for problem in caught.value.problems] == [
        "a.yaml:6 steps[0].after[0]: unknown step 'nope'",
        "a.yaml:7 steps[0].timeout: must be more than 0 (leave it out for no limit)",
        "a.yaml:8 steps[1].name: bad name 'A' (use a-z, 0-9 and '-', starting with a letter or digit, "
        "at most 63)",
        "b.yaml:3 path: must be an absolute path",
    ]
    assert caught.value.message == "4 problems in the documents"
    assert caught.value.details[0] == {
        "file": "a.yaml",
        "line": 6,
        "path": "steps[0].after[0]",
        "message": "unknown step 'nope'",
    }


def test_one_problem_is_the_error_message() -> None:
    with pytest.raises(DocumentErrors) as caught:
        parse("kind: Datastore\nname: d\npath: x\n", "d.yaml")

    assert caught.value.message == "d.yaml:3 path: must be an absolute path"
    assert caught.value.code == "invalid"


def test_same_kind_and_name_twice_across_files_is_a_duplicate() -> None:
    texts = [
        SourceText("a.yaml", "kind: Datastore\nname: d\npath: /x\n"),
        SourceText("b.yaml", "\n\nkind: Datastore\nname: d\npath: /y\n"),
    ]

    with pytest.raises(DocumentErrors) as caught:
        parse_documents(texts)

    assert [str(problem) for problem in caught.value.problems] == [
        "b.yaml:4 name: duplicate Datastore 'd' (first at a.yaml:1)"
    ]


def test_same_name_of_different_kinds_is_allowed() -> None:
    pipeline = "kind: Pipeline\nname: d\nsteps: [{name: a, command: [x]}]\n"

    documents = parse(pipeline + "---\nkind: Datastore\nname: d\npath: /x\n")

    assert [document.kind for document in documents] == ["Pipeline", "Datastore"]
