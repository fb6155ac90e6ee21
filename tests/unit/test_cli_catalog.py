"""The catalog commands against a real HTTP server that answers contract-shaped JSON and records requests."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import click
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from daemon.cli import catalog, output
from daemon.cli.http import ApiClient, ApiUnreachable
from daemon.documents.source import snapshot_directory
from tests.unit.fake_api import FakeApi, assert_help_everywhere, invoke
from tests.unit.fake_api import envelope as _envelope

CLI = click.Group("sluice")
catalog.register(CLI)

DIGEST = "sha256:" + "ab12cd34ef56" * 5 + "0000"

PIPELINE = """\
kind: Pipeline
name: batch-scoring
source: ./scoring
steps:
  - name: prep
    command: [python, prep.py]
"""
TRIGGER = """\
kind: Trigger
name: nightly
pipeline: batch-scoring
on:
  cron: "0 2 * * *"
"""


def sluice(api: FakeApi, *args: str, token: str | None = None, stdin: str | None = None) -> Result:
    return invoke(CLI, api, *args, token=token, stdin=stdin)


# --- apply ---


def _write(directory: Path, name: str, text: str) -> Path:
    file = directory / name
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    return file


def _scoring_dir(tmp_path: Path) -> Path:
    _write(tmp_path, "scoring/prep.py", "print('prep')\n")
    return tmp_path / "scoring"


APPLIED = {
    "items": [
        {"kind": "Pipeline", "name": "batch-scoring", "action": "published", "version": 2},
        {"kind": "Trigger", "name": "nightly", "action": "created", "version": None},
    ]
}


def test_apply_uploads_a_missing_source_and_prints_a_line_per_document(api: FakeApi, tmp_path: Path) -> None:
    snapshot = snapshot_directory(_scoring_dir(tmp_path))
    file = _write(tmp_path, "scoring.yaml", PIPELINE + "---\n" + TRIGGER)
    api.answer("PUT", f"/sources/{snapshot.digest}", {"digest": snapshot.digest, "stored": True}, status=201)
    api.answer("POST", "/apply", APPLIED)

    result = sluice(api, "apply", "-f", str(file), token="s3cret")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["pipeline/batch-scoring published v2", "trigger/nightly created"]
    head, put, post = api.requests
    assert (head.method, head.path) == ("HEAD", f"/api/v1/sources/{snapshot.digest}")
    assert (put.method, put.headers["Content-Type"], put.body) == (
        "PUT",
        "application/x-tar",
        snapshot.archive,
    )
    assert post.json() == {
        "documents": [{"file": str(file), "text": PIPELINE + "---\n" + TRIGGER}],
        "sources": [{"file": str(file), "source": "./scoring", "digest": snapshot.digest}],
        "make_default": True,
    }
    assert {request.headers["Authorization"] for request in api.requests} == {"Bearer s3cret"}


def test_apply_from_stdin_resolves_source_in_the_working_directory_and_skips_a_stored_one(
    api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = snapshot_directory(_scoring_dir(tmp_path))
    monkeypatch.chdir(tmp_path)
    api.answer("HEAD", f"/sources/{snapshot.digest}")
    api.answer("POST", "/apply", {"items": [APPLIED["items"][0] | {"action": "unchanged", "version": 1}]})

    result = sluice(api, "apply", "-f", "-", "--no-default", stdin=PIPELINE)

    assert result.exit_code == 0, result.output
    assert result.stdout == "pipeline/batch-scoring unchanged (v1)\n"
    assert [request.method for request in api.requests] == ["HEAD", "POST"]
    body = api.requests[-1].json()
    assert body["documents"] == [{"file": "<stdin>", "text": PIPELINE}]
    assert body["sources"] == [{"file": "<stdin>", "source": "./scoring", "digest": snapshot.digest}]
    assert body["make_default"] is False


def test_apply_reads_a_directorys_yaml_files_in_order(api: FakeApi, tmp_path: Path) -> None:
    _write(tmp_path, "b.yml", TRIGGER)
    _write(tmp_path, "a.yaml", "kind: Datastore\nname: landing\ntype: local\npath: /data/landing\n")
    _write(tmp_path, "notes.txt", "not a document")
    _write(tmp_path, "nested/c.yaml", "kind: nonsense")
    api.answer("POST", "/apply", {"items": []})

    result = sluice(api, "apply", "-f", str(tmp_path), "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"items": []}
    files = [document["file"] for document in api.requests[0].json()["documents"]]
    assert files == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yml")]


def test_apply_with_a_broken_document_exits_2_naming_file_and_line_without_a_request(
    api: FakeApi, tmp_path: Path
) -> None:
    file = _write(tmp_path, "broken.yaml", TRIGGER + "---\nkind: Pipeline\nname: Bad Name\nsteps: []\n")

    result = sluice(api, "apply", "-f", str(file))

    assert result.exit_code == 2
    assert result.stderr
    assert all(line.startswith(f"{file}:") for line in result.stderr.splitlines()), result.stderr
    assert api.requests == []


def test_apply_with_a_missing_source_directory_exits_2_without_a_request(
    api: FakeApi, tmp_path: Path
) -> None:
    file = _write(tmp_path, "scoring.yaml", PIPELINE)

    result = sluice(api, "apply", "-f", str(file))

    assert result.exit_code == 2
    assert result.stderr.startswith(f"{file}:1 source: ")
    assert len(result.stderr.splitlines()) == 1
    assert api.requests == []


def test_apply_without_documents_is_bad_input(api: FakeApi, tmp_path: Path) -> None:
    file = _write(tmp_path, "empty.yaml", "# nothing yet\n")

    result = sluice(api, "apply", "-f", str(file))

    assert (result.exit_code, result.stderr) == (2, f"error: no documents in {file}\n")
    assert api.requests == []


def test_apply_prints_each_detail_of_a_422_and_exits_2(api: FakeApi, tmp_path: Path) -> None:
    file = _write(tmp_path, "nightly.yaml", TRIGGER)
    details = [
        {
            "file": str(file),
            "line": 3,
            "path": "pipeline",
            "message": "pipeline batch-scoring does not exist",
        },
        {"file": str(file), "line": 5, "path": "on.cron", "message": "bad cron expression"},
    ]
    api.answer("POST", "/apply", _envelope("invalid", "2 problems", details), status=422)

    result = sluice(api, "apply", "-f", str(file))

    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{file}:3 pipeline: pipeline batch-scoring does not exist",
        f"{file}:5 on.cron: bad cron expression",
    ]


def test_a_409_is_a_failed_operation_exit_1(api: FakeApi, tmp_path: Path) -> None:
    file = _write(tmp_path, "nightly.yaml", TRIGGER)
    api.answer("POST", "/apply", _envelope("conflict", "another apply holds the catalog"), status=409)

    result = sluice(api, "apply", "-f", str(file))

    assert (result.exit_code, result.stderr) == (1, "error: another apply holds the catalog\n")


# --- errors of any command ---


def test_an_unreachable_api_is_one_clear_line_exit_1(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"

    result = CliRunner().invoke(CLI, ["pipelines"], env={"SLUICE_API_URL": url})

    assert result.exit_code == 1
    assert result.stderr == (
        f"error: cannot reach the Sluice API at {url}: connection refused "
        "(is `sluice up` running? set SLUICE_API_URL)\n"
    )


def test_a_404_is_bad_input_exit_2(api: FakeApi) -> None:
    api.answer(
        "GET", "/pipelines/nope/versions", _envelope("not_found", "pipeline nope does not exist"), status=404
    )

    result = sluice(api, "versions", "nope")

    assert (result.exit_code, result.stderr) == (2, "error: pipeline nope does not exist\n")


def test_an_answer_without_the_envelope_names_the_status(api: FakeApi) -> None:
    api.answer("GET", "/pipelines", "<html>bad gateway</html>", status=502)

    result = sluice(api, "pipelines")

    assert (result.exit_code, result.stderr) == (1, "error: the Sluice API answered HTTP 502 Bad Gateway\n")


def test_an_answer_of_the_wrong_shape_is_a_failed_operation(api: FakeApi) -> None:
    api.answer("GET", "/pipelines", {"items": [{"description": "no name"}], "next_cursor": None})

    result = sluice(api, "pipelines")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: the Sluice API answered an unexpected shape: ")


def test_a_slow_answer_times_out(api: FakeApi) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    api.answer("GET", "/pipelines", slow)

    with pytest.raises(ApiUnreachable, match=r"did not answer within 0\.2 s"):
        ApiClient(api.url, timeout=0.2).request("GET", "/pipelines")


def test_no_authorization_header_without_a_token(api: FakeApi) -> None:
    api.answer("GET", "/datastores", {"items": [], "next_cursor": None})

    result = sluice(api, "datastores")

    assert (result.exit_code, result.stderr) == (0, "no datastores\n")
    assert "Authorization" not in api.requests[0].headers


# --- lists ---


def test_datastores_shows_a_local_path_and_an_s3_location(api: FakeApi) -> None:
    # As the API gives them: the type's settings beside name and type.
    local = {"name": "default", "type": "local", "path": "/data/default"}
    s3 = {"name": "landing", "type": "s3", "bucket": "acme", "prefix": "in", "endpoint": "http://minio:9000",
          "access_key_id_env": "K", "secret_access_key_env": "S", "path_style": True}  # fmt: skip
    api.answer("GET", "/datastores", {"items": [local, s3], "next_cursor": None})

    result = sluice(api, "datastores")

    assert result.exit_code == 0, result.output
    assert [row.split() for row in result.stdout.splitlines()] == [
        ["NAME", "TYPE", "PATH"],
        ["default", "local", "/data/default"],
        ["landing", "s3", "s3://acme/in", "at", "http://minio:9000"],
    ]


def test_pipelines_follows_the_cursor_into_one_table(api: FakeApi, local_tz: None) -> None:
    first = {"name": "batch-scoring", "description": "", "default_version": 2, "latest_version": 3,
             "versions": 3, "updated_at": "2026-11-23T13:02:09+00:00"}  # fmt: skip
    second = first | {"name": "a-very-long-pipeline-name-that-must-not-be-cut-" + "x" * 20, "versions": 1}
    api.answer("GET", "/pipelines", {"items": [first], "next_cursor": "page2"})
    api.answer("GET", "/pipelines?cursor=page2", {"items": [second], "next_cursor": None})

    result = sluice(api, "pipelines")

    assert result.exit_code == 0, result.output
    assert [request.query for request in api.requests] == [{}, {"cursor": "page2"}]
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "DEFAULT", "LATEST", "VERSIONS", "UPDATED"]
    assert [row.split() for row in rows] == [
        ["batch-scoring", "2", "3", "3", "2026-11-23", "14:02"],
        [second["name"], "2", "3", "1", "2026-11-23", "14:02"],
    ]


def test_pipelines_json_prints_every_item(api: FakeApi) -> None:
    item = {
        "name": "batch-scoring",
        "default_version": 1,
        "latest_version": 1,
        "versions": 1,
        "updated_at": None,
    }
    api.answer("GET", "/pipelines", {"items": [item], "next_cursor": None})

    result = sluice(api, "pipelines", "--json")

    assert json.loads(result.stdout) == {"items": [item]}


def test_versions_marks_the_default_and_shortens_digests(api: FakeApi, local_tz: None) -> None:
    version = {"pipeline": "batch-scoring", "version": 2, "digest": DIGEST, "status": "active",
               "is_default": True, "created_at": "2026-07-01T08:30:00Z", "spec": {}}  # fmt: skip
    older = version | {"version": 1, "status": "deprecated", "is_default": False}
    api.answer("GET", "/pipelines/batch-scoring/versions", {"items": [version, older], "next_cursor": None})

    result = sluice(api, "versions", "batch-scoring")

    assert result.exit_code == 0, result.output
    rows = [row.split() for row in result.stdout.splitlines()[1:]]
    assert rows == [
        ["2", "active", "*", "ab12cd34ef56", "2026-07-01", "10:30"],
        ["1", "deprecated", "ab12cd34ef56", "2026-07-01", "10:30"],
    ]


def test_triggers_lists_without_a_subcommand(api: FakeApi) -> None:
    trigger = {"name": "nightly", "pipeline": "batch-scoring", "version": None, "source": "cron",
               "paused": True, "last_event_at": None, "spec": {}}  # fmt: skip
    api.answer("GET", "/triggers", {"items": [trigger], "next_cursor": None})

    result = sluice(api, "triggers")

    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[1].split()
    assert row == ["nightly", "batch-scoring", "default", "cron", "paused", "-"]


def test_triggers_say_where_each_source_stands(api: FakeApi, local_tz: None) -> None:
    base = {"pipeline": "p", "version": None, "paused": False, "last_event_at": None, "spec": {}}
    items = [
        base
        | {"name": "cron", "source": "cron", "status": {"active": True, "next_fire": "2026-11-24T01:00:00Z"}},
        base
        | {"name": "files", "source": "files", "status": {"active": True, "watch": "inotify", "pending": 2}},
        base | {"name": "bus", "source": "nats", "status": {"active": True, "consumer_lag": 0}},
        base | {"name": "broken", "source": "nats", "status": {"active": False, "error": "no stream JOBS"}},
        base | {"name": "elsewhere", "source": "cron", "status": {"standby": True, "leader": "h1:42"}},
    ]
    api.answer("GET", "/triggers", {"items": items, "next_cursor": None})

    result = sluice(api, "triggers")

    assert result.exit_code == 0, result.output
    details = [line.split("-", 1)[1].split() for line in result.stdout.splitlines()[1:]]
    assert details == [
        ["next", "2026-11-24", "02:00"],
        ["inotify,", "2", "settling"],
        ["lag", "0"],
        ["error:", "no", "stream", "JOBS"],
        ["runs", "on", "h1:42"],
    ]


def test_datastores_table(api: FakeApi) -> None:
    api.answer(
        "GET", "/datastores", {"items": [{"name": "landing", "type": "local", "path": "/data/landing"}]}
    )

    result = sluice(api, "datastores")

    assert result.stdout.splitlines()[1].split() == ["landing", "local", "/data/landing"]


def test_trigger_events_table(api: FakeApi, local_tz: None) -> None:
    seen = {"id": 7, "trigger": "nightly", "received_at": "2026-11-23T01:00:00Z",
            "outcome": "run", "run_id": "r-1", "reason": None}  # fmt: skip
    rejected = seen | {"outcome": "rejected", "run_id": None, "reason": "params.date: required"}
    api.answer("GET", "/triggers/nightly/events", {"items": [seen, rejected], "next_cursor": None})

    result = sluice(api, "triggers", "events", "nightly")

    assert [row.split() for row in result.stdout.splitlines()] == [
        ["RECEIVED", "OUTCOME", "RUN", "REASON"],
        ["2026-11-23", "02:00", "run", "r-1"],
        ["2026-11-23", "02:00", "rejected", "-", "params.date:", "required"],
    ]


# --- actions ---


@pytest.mark.parametrize(
    ("args", "method", "target", "body", "line"),
    [
        (["default", "batch-scoring", "v3"], "PUT", "/pipelines/batch-scoring/default", {"version": 3},
         "batch-scoring: v3 is now the default"),
        (["deprecate", "batch-scoring", "2"], "PATCH", "/pipelines/batch-scoring/versions/2",
         {"status": "deprecated"}, "batch-scoring v2 deprecated"),
        (["disable", "batch-scoring", "2"], "PATCH", "/pipelines/batch-scoring/versions/2",
         {"status": "disabled"}, "batch-scoring v2 disabled"),
        (["enable", "batch-scoring", "V2"], "PATCH", "/pipelines/batch-scoring/versions/2",
         {"status": "active"}, "batch-scoring v2 enabled"),
        (["triggers", "pause", "nightly"], "POST", "/triggers/nightly/pause", None, "trigger/nightly paused"),
        (["triggers", "resume", "nightly"], "POST", "/triggers/nightly/resume", None,
         "trigger/nightly resumed"),
        (["triggers", "delete", "nightly"], "DELETE", "/triggers/nightly", None, "trigger/nightly deleted"),
    ],
)  # fmt: skip
def test_actions_send_one_request_and_confirm(
    api: FakeApi, args: list[str], method: str, target: str, body: Any, line: str
) -> None:
    api.answer(method, target, {"ok": True})

    result = sluice(api, *args)
    as_json = sluice(api, *args, "--json")

    assert (result.exit_code, result.stdout) == (0, line + "\n")
    assert json.loads(as_json.stdout) == {"ok": True}
    request = api.requests[0]
    assert (request.method, request.path) == (method, "/api/v1" + target)
    assert (request.json() if request.body else None) == body


@pytest.mark.parametrize("version", ["0", "-1", "three", "v", "2.5", "99999999999"])
def test_a_bad_version_number_is_a_usage_error_without_a_request(api: FakeApi, version: str) -> None:
    result = sluice(api, "disable", "batch-scoring", "--", version)

    assert result.exit_code == 2
    assert "is not a version number (write 3 or v3, at most 2147483647)" in result.stderr
    assert api.requests == []


def test_every_command_has_help() -> None:
    assert_help_everywhere(CLI)


def test_an_upload_goes_out_in_chunks_that_report_progress(api: FakeApi) -> None:
    archive = bytes(range(256)) * 4096
    api.answer("PUT", "/sources/sha256:x", {"stored": True}, status=201)
    sent: list[int] = []

    ApiClient(api.url).request("PUT", "/sources/sha256:x", body=archive, on_sent=sent.append)

    assert (api.requests[0].body, sum(sent), len(sent) > 1) == (archive, len(archive), True)


# --- formatting ---


@pytest.mark.parametrize(
    ("status", "code"), [(400, 2), (401, 2), (404, 2), (422, 2), (409, 1), (500, 1), (502, 1), (503, 1)]
)
def test_exit_codes(status: int, code: int) -> None:
    assert output.exit_code(status) == code


@pytest.mark.parametrize(
    ("detail", "line"),
    [
        ({"file": "a.yaml", "line": 3, "path": "steps[0].command", "message": "empty"},
         "a.yaml:3 steps[0].command: empty"),
        ({"file": "a.yaml", "line": None, "path": "", "message": "not YAML"}, "a.yaml: not YAML"),
        ({"path": "version", "message": "must be at least 1"}, "version: must be at least 1"),
        ("a plain string", "a plain string"),
    ],
)  # fmt: skip
def test_format_detail(detail: Any, line: str) -> None:
    assert output.format_detail(detail) == line


def test_format_time_is_local_and_short(local_tz: None) -> None:
    assert output.format_time("2026-11-23T13:02:59Z") == "2026-11-23 14:02"
    assert output.format_time("2026-07-01T08:30:00+00:00") == "2026-07-01 10:30"
    assert output.format_time("2026-07-01T08:30:00") == "2026-07-01 10:30"
    assert (output.format_time(None), output.format_time("yesterday")) == ("-", "yesterday")
