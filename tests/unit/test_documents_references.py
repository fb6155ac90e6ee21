"""check_references: datastores, pipelines, pinned versions and trigger params."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from textwrap import dedent

from daemon.documents import ParamSpec, SourceText, check_references, parse_documents

PIPELINE = """\
kind: Pipeline
name: scoring
params:
  date: {type: string}
  limit: {type: integer, default: 10}
  ratio: {type: number, default: 0.5}
steps:
  - name: prep
    command: [x]
    inputs:
      raw: {datastore: landing, path: x}
"""

StoredParams = Mapping[tuple[str, int | None], Mapping[str, ParamSpec]]


def check(*texts: str, datastores: Collection[str] = (), stored: StoredParams | None = None) -> list[str]:
    """The reference problems of ``texts`` (file ``f<N>.yaml`` each), as the user sees them.
    ``stored`` maps (pipeline, version) to params; version None is the default version."""
    documents = parse_documents(
        [SourceText(f"f{index}.yaml", dedent(text)) for index, text in enumerate(texts, start=1)]
    )
    known = stored or {}
    found = check_references(
        documents, datastores=datastores, pipeline_params=lambda name, version: known.get((name, version))
    )
    return [str(problem) for problem in found]


def trigger(body: str, pipeline: str = "scoring") -> str:
    return f"kind: Trigger\nname: t\npipeline: {pipeline}\n" + dedent(body)


CRON = "on: {cron: '0 2 * * *'}\n"


# Datastores


def test_unknown_datastore_in_step_inputs() -> None:
    assert check(PIPELINE) == ["f1.yaml:11 steps[0].inputs.raw.datastore: unknown datastore 'landing'"]


def test_stored_datastore_and_datastore_document_of_the_batch_are_known() -> None:
    assert check(PIPELINE, datastores=["landing"]) == []
    assert check(PIPELINE, "kind: Datastore\nname: landing\npath: /data\n") == []


def test_default_datastore_is_always_known() -> None:
    text = PIPELINE.replace("datastore: landing", "datastore: default")

    assert check(text) == []


def test_unknown_datastore_from_defaults_is_reported_at_defaults_naming_the_step() -> None:
    text = """\
        kind: Pipeline
        name: p
        defaults:
          inputs:
            raw: {datastore: landing, path: x}
        steps:
          - name: a
            command: [x]
          - name: b
            command: [x]
            inputs:
              raw: {datastore: other, path: x}
    """

    assert check(text) == [
        "f1.yaml:5 defaults.inputs.raw.datastore: unknown datastore 'landing' (in step a)",
        "f1.yaml:12 steps[1].inputs.raw.datastore: unknown datastore 'other'",
    ]


def test_unknown_datastore_of_a_files_trigger() -> None:
    text = trigger("on:\n  files: {datastore: inbox, pattern: '*.csv'}\nparams: {date: x}\n")

    assert check(PIPELINE, text, datastores=["landing"]) == [
        "f2.yaml:5 on.files.datastore: unknown datastore 'inbox'"
    ]
    assert check(PIPELINE, text, datastores=["landing", "inbox"]) == []


# Pipelines and versions


def test_unknown_pipeline() -> None:
    assert check(trigger(CRON, pipeline="nope")) == ["f1.yaml:3 pipeline: unknown pipeline 'nope'"]


def test_pipeline_of_the_batch_or_stored_is_known() -> None:
    text = trigger(CRON + "params: {date: x}\n")

    assert check(PIPELINE, text, datastores=["landing"]) == []
    assert check(text, stored={("scoring", None): {"date": ParamSpec(type="string")}}) == []


def test_pinned_version_must_exist() -> None:
    stored = {("scoring", None): {}, ("scoring", 2): {}}

    assert check(trigger("version: 2\n" + CRON), stored=stored) == []
    assert check(trigger("version: 3\n" + CRON), stored=stored) == [
        "f1.yaml:4 version: pipeline 'scoring' has no version 3"
    ]


def test_pinned_version_is_checked_against_that_versions_params() -> None:
    stored = {("scoring", None): {"date": ParamSpec(type="string")}, ("scoring", 1): {}}

    assert check(trigger("version: 1\n" + CRON + "params: {date: x}\n"), stored=stored) == [
        "f1.yaml:6 params.date: pipeline 'scoring' has no param 'date'"
    ]


def test_run_source_pipeline_must_be_known() -> None:
    text = trigger("on:\n  run: {pipeline: training}\nparams: {date: x}\n")

    assert check(PIPELINE, text, datastores=["landing"]) == [
        "f2.yaml:5 on.run.pipeline: unknown pipeline 'training'"
    ]


# Params


def test_trigger_param_must_be_a_pipeline_param() -> None:
    text = trigger(CRON + "params:\n  date: x\n  colour: red\n")

    assert check(PIPELINE, text, datastores=["landing"]) == [
        "f2.yaml:7 params.colour: pipeline 'scoring' has no param 'colour'"
    ]


def test_required_param_must_be_bound() -> None:
    assert check(PIPELINE, trigger(CRON + "params: {limit: 3}\n"), datastores=["landing"]) == [
        "f2.yaml:5 params.date: required by pipeline 'scoring', not bound"
    ]
    # Without a params key, the problem is at the trigger's first line.
    assert check(PIPELINE, trigger(CRON), datastores=["landing"]) == [
        "f2.yaml:1 params.date: required by pipeline 'scoring', not bound"
    ]


def test_literal_of_the_wrong_type_is_refused() -> None:
    text = trigger(CRON + "params:\n  date: 20240101\n  limit: '${event.x}'\n  ratio: 1\n")

    assert check(PIPELINE, text, datastores=["landing"]) == [
        "f2.yaml:6 params.date: pipeline 'scoring' wants a string"
    ]
    bad_limit = trigger(CRON + "params:\n  date: x\n  limit: 2.5\n  ratio: true\n")
    assert check(PIPELINE, bad_limit, datastores=["landing"]) == [
        "f2.yaml:7 params.limit: pipeline 'scoring' wants an integer",
        "f2.yaml:8 params.ratio: pipeline 'scoring' wants a number",
    ]


def test_param_accepts_only_its_own_type() -> None:
    assert ParamSpec(type="integer").accepts(3)
    assert not ParamSpec(type="integer").accepts(True)
    assert ParamSpec(type="number").accepts(3)
    assert not ParamSpec(type="number").accepts(False)
    assert ParamSpec(type="boolean").accepts(False)
    assert not ParamSpec(type="string").accepts(1)
