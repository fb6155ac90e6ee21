"""Datastore documents: ``local`` and ``s3``, and the problems each field can have."""

from __future__ import annotations

import pytest

from daemon.documents import DatastoreSpec
from daemon.documents.specs import FromStep
from kit.objectstore import S3Location
from tests.unit.documents_helpers import parse, problems

S3 = """\
kind: Datastore
name: landing
type: s3
bucket: acme-landing
prefix: incoming/
endpoint: https://minio.example:9000
region: eu-west-1
path_style: true
credentials: {access_key_id_env: LANDING_KEY_ID, secret_access_key_env: LANDING_SECRET}
"""


def test_an_s3_datastore_maps_to_its_location_without_secrets() -> None:
    [document] = parse(S3)

    assert document.spec == DatastoreSpec(
        name="landing",
        type="s3",
        s3=S3Location(
            bucket="acme-landing",
            prefix="incoming",
            endpoint="https://minio.example:9000",
            region="eu-west-1",
            path_style=True,
            access_key_id_env="LANDING_KEY_ID",
            secret_access_key_env="LANDING_SECRET",
        ),
    )
    assert document.spec.settings() == {
        "bucket": "acme-landing",
        "prefix": "incoming",
        "endpoint": "https://minio.example:9000",
        "region": "eu-west-1",
        "path_style": True,
        "access_key_id_env": "LANDING_KEY_ID",
        "secret_access_key_env": "LANDING_SECRET",
    }


def test_an_s3_datastore_with_a_credentials_file_or_the_provider_chain() -> None:
    [by_file] = parse(
        "kind: Datastore\nname: d\ntype: s3\nbucket: b-1\n"
        "credentials: {file: /etc/sluice/aws, profile: landing}\n"
    )
    [chain] = parse("kind: Datastore\nname: d\ntype: s3\nbucket: b-1\n")

    assert by_file.spec.s3 == S3Location(bucket="b-1", credentials_file="/etc/sluice/aws", profile="landing")
    assert chain.spec.s3 == S3Location(bucket="b-1")


def test_a_local_datastore_stores_its_path() -> None:
    [document] = parse("kind: Datastore\nname: d\npath: /data\n")

    assert document.spec == DatastoreSpec(name="d", type="local", path="/data")
    assert document.spec.settings() == {"path": "/data"}


def s3(extra: str) -> str:
    return "kind: Datastore\nname: d\ntype: s3\n" + extra


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (s3(""), "p.yaml:1 bucket: missing (an s3 datastore names its bucket)"),
        (s3("bucket: Bad_Bucket\n"), "p.yaml:4 bucket: bad bucket name 'Bad_Bucket'"),
        (s3("bucket: ab\n"), "p.yaml:4 bucket: bad bucket name 'ab'"),
        (s3("bucket: b-1\nprefix: /abs\n"), "p.yaml:5 prefix: must be relative to the bucket"),
        (s3("bucket: b-1\nprefix: a/../b\n"), "p.yaml:5 prefix: must be relative to the bucket"),
        (s3("bucket: b-1\nprefix: a//b\n"), "p.yaml:5 prefix: must be a key prefix"),
        (s3("bucket: b-1\nprefix: a/./b\n"), "p.yaml:5 prefix: must be a key prefix"),
        (s3("bucket: b-1\nendpoint: ftp://x\n"), "p.yaml:5 endpoint: must be an http:// or https:// URL"),
        (s3("bucket: b-1\nendpoint: minio:9000\n"), "p.yaml:5 endpoint: must be an http:// or https:// URL"),
        (
            s3("bucket: b-1\nendpoint: http://k:s@minio\n"),
            "p.yaml:5 endpoint: must be an http:// or https:// URL, without credentials in it",
        ),
        (s3("bucket: b-1\npath: /data\n"), "p.yaml:5 path: is for type local"),
        ("kind: Datastore\nname: d\npath: /data\nbucket: b-1\n", "p.yaml:4 bucket: is for type s3"),
        ("kind: Datastore\nname: d\n", "p.yaml:1 path: missing"),
        (
            s3(
                "bucket: b-1\ncredentials:\n  access_key_id_env: K\n  secret_access_key_env: S\n"
                "  file: /etc/aws\n"
            ),
            "p.yaml:5 credentials: give environment variable names or file and profile, not both",
        ),
        (
            s3("bucket: b-1\ncredentials: {access_key_id_env: K}\n"),
            "p.yaml:5 credentials: needs both access_key_id_env and secret_access_key_env",
        ),
        (
            s3("bucket: b-1\ncredentials: {access_key_id_env: K, secret_access_key_env: 'not a name'}\n"),
            "p.yaml:5 credentials.secret_access_key_env: bad name 'not a name'",
        ),
        (s3("bucket: b-1\ncredentials: {profile: p}\n"), "p.yaml:5 credentials.profile: needs file"),
        (
            s3("bucket: b-1\ncredentials: {file: aws}\n"),
            "p.yaml:5 credentials.file: must be an absolute path",
        ),
    ],
)
def test_s3_datastore_problems_name_the_field(text: str, expected: str) -> None:
    [problem] = problems(text)
    assert problem.startswith(expected), problem


def test_a_secret_written_in_the_document_is_refused_and_not_repeated() -> None:
    found = problems(
        s3(
            "bucket: b-1\nsecret_access_key: hunter2-top\n"
            "credentials:\n  access_key_id_env: K\n  secret_access_key_env: S\n  session_token: tok-99\n"
        )
    )

    assert found == [
        "p.yaml:5 secret_access_key: never write a secret in a document: name the environment "
        "variable that holds it with credentials.secret_access_key_env (or use credentials.file and "
        "profile)",
        "p.yaml:9 credentials.session_token: never write a secret in a document: name the environment "
        "variable that holds it with credentials.session_token_env (or use credentials.file and profile)",
    ]
    assert not any("hunter2" in problem or "tok-99" in problem for problem in found)


def test_input_mode_is_download_by_default_and_refuses_other_words() -> None:
    pipeline = """\
    kind: Pipeline
    name: p
    steps:
      - name: a
        command: [run]
        inputs:
          raw: {datastore: landing, path: x, mode: %s}
    """
    [document] = parse(pipeline % "uri")
    assert document.spec.steps[0].inputs["raw"].mode == "uri"
    [problem] = problems(pipeline % "stream")
    assert problem == "p.yaml:7 steps[0].inputs.raw.mode: invalid enum value 'stream'"


STEP_INPUTS = """\
kind: Pipeline
name: p
steps:
  - name: a
    command: [run]
    outputs: [o]
  - name: b
    command: [run]
    inputs:
      %s
"""


def test_a_step_output_input_may_be_a_mapping_with_mode() -> None:
    [document] = parse(STEP_INPUTS % "up: {output: '${steps.a.outputs.o}', mode: uri}")

    assert document.spec.steps[1].inputs["up"] == FromStep(step="a", output="o", mode="uri")


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (
            "up: {output: '${steps.a.outputs.o}', path: x}",
            ["p.yaml:10 steps[1].inputs.up.path: goes with datastore"],
        ),
        ("up: {output: 'a.o'}", ["p.yaml:10 steps[1].inputs.up.output: must be ${steps.STEP.outputs.NAME}"]),
        (
            "up: {mode: uri}",
            ["p.yaml:10 steps[1].inputs.up.datastore: missing", "p.yaml:10 steps[1].inputs.up.path: missing"],
        ),
    ],
)
def test_input_mapping_problems(written: str, expected: list[str]) -> None:
    found = problems(STEP_INPUTS % written)
    assert len(found) == len(expected), found
    for problem, start in zip(found, expected, strict=True):
        assert problem.startswith(start), problem
