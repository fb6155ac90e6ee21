"""Canonical JSON of specs and the version digest of pipelines."""

from __future__ import annotations

import json
import re

import msgspec
import pytest

from daemon.documents import PipelineSpec, spec_from_json, spec_to_json, version_digest
from tests.unit.documents_helpers import parse

PIPELINE = """\
kind: Pipeline
name: scoring
params:
  date: {type: string}
  ratio: {type: number, default: 1}
source: ./scoring
defaults: {retries: 1}
steps:
  - name: prep
    command: [python, prep.py, "${params.date}"]
    inputs:
      raw: {datastore: landing, path: x}
    outputs: [features]
    resources: {cpu: 500m, memory: 1Gi}
    timeout: 30m
  - name: score
    command: [python, score.py]
    inputs:
      features: ${steps.prep.outputs.features}
"""

# The same pipeline, written in another key order, flow style, other spellings and with comments.
PIPELINE_REWRITTEN = """\
# scoring, again
name: scoring
kind: Pipeline
apiVersion: sluice/v1
steps:
  - command: [python, prep.py, "${params.date}"]
    name: prep
    timeout: 1800
    resources:
      memory: 1073741824
      cpu: 0.5
    outputs:
      - features
    inputs: {raw: {path: x, datastore: landing}}
    retries: 1
  - {name: score, retries: 1, command: [python, score.py],
     inputs: {features: "${steps.prep.outputs.features}"}}
params:
  ratio: {default: 1.0, type: number}
  date: {type: string}
source: ./elsewhere
"""

TRIGGER = """\
kind: Trigger
name: t
pipeline: scoring
on:
  files: {datastore: landing, pattern: '*.csv', settle: 1m}
params: {date: '${event.path}', n: 2}
"""


def spec_of(text: str) -> PipelineSpec:
    [document] = parse(text)
    assert isinstance(document.spec, PipelineSpec)
    return document.spec


@pytest.mark.parametrize(
    "text",
    [PIPELINE, TRIGGER, "kind: Datastore\nname: d\npath: /data\n"],
    ids=["pipeline", "trigger", "datastore"],
)
def test_spec_round_trips_through_json(text: str) -> None:
    [document] = parse(text)

    data = json.loads(json.dumps(spec_to_json(document.spec)))

    assert spec_from_json(document.kind, data) == document.spec


def test_canonical_json_is_explicit_and_tagged() -> None:
    data = spec_to_json(spec_of(PIPELINE))

    prep = data["steps"][0]
    assert prep["resources"] == {"cpu": 0.5, "memory": 1073741824, "gpu": 0, "gpu_memory": None}
    assert prep["timeout"] == 1800.0
    assert prep["retries"] == 1
    assert prep["inputs"]["raw"] == {
        "from": "datastore",
        "datastore": "landing",
        "path": "x",
        "hash": "listing",
    }
    assert data["steps"][1]["inputs"]["features"] == {"from": "step", "step": "prep", "output": "features"}
    assert data["params"]["ratio"] == {"type": "number", "default": 1.0, "description": ""}


def test_trigger_json_carries_its_source_tag() -> None:
    [document] = parse(TRIGGER)

    assert spec_to_json(document.spec)["on"]["source"] == "files"


def test_spec_from_json_refuses_what_is_not_a_spec() -> None:
    data = spec_to_json(spec_of(PIPELINE))
    data["steps"][0]["resources"]["cpu"] = "500m"

    with pytest.raises(msgspec.ValidationError):
        spec_from_json("Pipeline", data)


def test_version_digest_format() -> None:
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", version_digest(spec_of(PIPELINE), None))


def test_version_digest_ignores_how_the_yaml_is_written_and_the_source_directory_name() -> None:
    assert version_digest(spec_of(PIPELINE), "sha256:abc") == version_digest(
        spec_of(PIPELINE_REWRITTEN), "sha256:abc"
    )


def test_version_digest_changes_with_the_source_digest() -> None:
    spec = spec_of(PIPELINE)

    assert version_digest(spec, "sha256:aaa") != version_digest(spec, "sha256:bbb")
    assert version_digest(spec, None) != version_digest(spec, "sha256:aaa")


def test_version_digest_changes_with_the_spec() -> None:
    changed = PIPELINE.replace("timeout: 30m", "timeout: 31m")

    assert version_digest(spec_of(PIPELINE), None) != version_digest(spec_of(changed), None)


# A digest computed before steps could have ``foreach``: publishing the same pipeline again must give
# the same version.
DIGEST_BEFORE_FOREACH = "sha256:ec04c556735f8e0282e34cf5b50295c13ad6d436d716d721a8bbd353cb21963c"


def test_a_step_without_foreach_has_none_in_canonical_json_and_keeps_its_digest() -> None:
    spec = spec_of(PIPELINE)

    assert all("foreach" not in step for step in spec_to_json(spec)["steps"])
    assert version_digest(spec, None) == DIGEST_BEFORE_FOREACH


FANNED_OUT = PIPELINE.replace(
    "    timeout: 30m\n",
    "    timeout: 30m\n"
    "    foreach: {files: {input: raw, pattern: '*.csv', per: 10}, allowed_failures: 10%}\n",
)


def test_foreach_is_in_canonical_json_and_changes_the_digest() -> None:
    spec = spec_of(FANNED_OUT)
    prep = spec_to_json(spec)["steps"][0]

    assert prep["foreach"] == {
        "over": {"kind": "files", "input": "raw", "pattern": "*.csv", "per": 10},
        "max_parallel": None,
        "allowed_failures": "10%",
    }
    assert "foreach" not in spec_to_json(spec)["steps"][1]
    assert spec_from_json("Pipeline", json.loads(json.dumps(spec_to_json(spec)))) == spec
    assert version_digest(spec, None) != DIGEST_BEFORE_FOREACH
    shards = FANNED_OUT.replace("{files: {input: raw, pattern: '*.csv', per: 10}, ", "{shards: 10, ")
    assert version_digest(spec_of(shards), None) not in (DIGEST_BEFORE_FOREACH, version_digest(spec, None))


def test_a_datastore_input_in_download_mode_keeps_its_digest_and_uri_mode_changes_it() -> None:
    spec = spec_of(PIPELINE)
    assert "mode" not in spec_to_json(spec)["steps"][0]["inputs"]["raw"]

    uri = spec_of(PIPELINE.replace("path: x}", "path: x, mode: uri}"))

    assert spec_to_json(uri)["steps"][0]["inputs"]["raw"]["mode"] == "uri"
    assert spec_from_json("Pipeline", json.loads(json.dumps(spec_to_json(uri)))) == uri
    assert version_digest(uri, None) != DIGEST_BEFORE_FOREACH
