"""The run and agent commands against the fake API: canned JSON, scripted event streams, recorded requests."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import click
import msgspec
import pytest
from click.testing import Result
from rich.console import Console

from daemon.cli import agents, follow, output, runs
from daemon.cli.http import ApiClient, ApiUnreachable, ServerSentEvent, parse_events
from daemon.cli.records import Run
from tests.unit.fake_api import FakeApi, assert_help_everywhere, envelope, event_stream, invoke

CLI = click.Group("sluice")
runs.register(CLI)
agents.register(CLI)

RUN_ID = "3f2a9c1e-7b4d-4e2a-9c1e-7b4d4e2a9c1e"
OTHER_ID = "0b1c2d3e-0000-4000-8000-000000000000"
T0 = "2026-11-23T13:02:00Z"


def sluice(api: FakeApi, *args: str) -> Result:
    return invoke(CLI, api, *args)


def attempt(number: int = 1, status: str = "succeeded", **fields: Any) -> dict[str, Any]:
    return {"number": number, "agent": "cpu-1", "status": status, "exit_code": 0, "started_at": T0,
            "finished_at": "2026-11-23T13:02:03Z", "error": None} | fields  # fmt: skip


def step(name: str, status: str = "pending", attempts: list[dict[str, Any]] | None = None, **fields: Any):
    return {"name": name, "status": status, "reused": False, "fingerprint": None, "outputs": {},
            "metrics": [], "waiting_reason": None, "attempts": attempts or []} | fields  # fmt: skip


def run_object(status: str = "queued", steps: list[dict[str, Any]] | None = None, **fields: Any):
    return {"id": RUN_ID, "run_id": RUN_ID, "pipeline": "batch-scoring", "version": 3, "status": status,
            "params": {"date": "2026-11-23"}, "trigger": None, "event_id": None, "created_at": T0,
            "started_at": None, "finished_at": None, "reason": None,
            "steps": steps if steps is not None else [step("prep"), step("score")]} | fields  # fmt: skip


def step_event(name: str, status: str, attempt: int | None = None, agent: str | None = None, **fields: Any):
    return ("step", {"run_id": RUN_ID, "name": name, "status": status, "attempt": attempt, "agent": agent,
                     "waiting_reason": None} | fields)  # fmt: skip


def run_event(status: str, run_id: str = RUN_ID) -> tuple[str, dict[str, Any]]:
    return ("run", {"id": run_id, "pipeline": "batch-scoring", "version": 3, "status": status})


# --- sluice run ---


@pytest.mark.parametrize(
    ("text", "value"),
    [("5", 5), ("-2.5", -2.5), ("1e3", 1000.0), ("true", True), ("false", False), ("null", None),
     ('"007"', "007"), ("007", "007"), ("2026-11-23", "2026-11-23"), ("prod", "prod"), ("", ""),
     ("NaN", "NaN"), ("Infinity", "Infinity"), ("[1, 2]", "[1, 2]"), ('{"a": 1}', '{"a": 1}')],
)  # fmt: skip
def test_param_values_are_json_scalars_or_text(text: str, value: Any) -> None:
    assert runs.parse_param_value(text) == value
    assert type(runs.parse_param_value(text)) is type(value)


def test_run_prints_only_the_id_and_sends_typed_params(api: FakeApi) -> None:
    api.answer("POST", "/pipelines/batch-scoring/runs", run_object(), status=201)

    result = sluice(
        api, "run", "batch-scoring", "-p", "date=2026-11-23", "-p", "limit=10", "-p", "expr=a=b",
        "--param", 'code="007"', "--version", "v3", "--no-reuse", "--idempotency-key", "req-42",
    )  # fmt: skip

    assert (result.exit_code, result.stdout, result.stderr) == (0, RUN_ID + "\n", "")
    (request,) = api.requests
    assert request.json() == {
        "params": {"date": "2026-11-23", "limit": 10, "expr": "a=b", "code": "007"},
        "reuse": False,
        "version": 3,
    }
    assert request.headers["Idempotency-Key"] == "req-42"


def test_run_without_options_sends_empty_params_and_no_idempotency_key(api: FakeApi) -> None:
    api.answer("POST", "/pipelines/batch-scoring/runs", {"run_id": RUN_ID}, status=201)

    result = sluice(api, "run", "batch-scoring")

    assert result.stdout == RUN_ID + "\n"
    assert api.requests[0].json() == {"params": {}, "reuse": True}
    assert "Idempotency-Key" not in api.requests[0].headers


def test_run_json_prints_the_answer(api: FakeApi) -> None:
    api.answer("POST", "/pipelines/batch-scoring/runs", run_object(), status=201)

    result = sluice(api, "run", "batch-scoring", "--json")

    assert json.loads(result.stdout) == run_object()


@pytest.mark.parametrize("bad", ["date", "=5", " =5"])
def test_a_malformed_param_is_exit_2_naming_it_without_a_request(api: FakeApi, bad: str) -> None:
    result = sluice(api, "run", "batch-scoring", "-p", bad)

    assert result.exit_code == 2
    assert f"{bad!r} is not KEY=VALUE" in result.stderr
    assert api.requests == []


def test_a_param_given_twice_is_exit_2(api: FakeApi) -> None:
    result = sluice(api, "run", "batch-scoring", "-p", "date=1", "-p", "date=2")

    assert result.exit_code == 2
    assert "date is given twice" in result.stderr
    assert api.requests == []


def test_param_errors_print_each_detail_and_exit_2(api: FakeApi) -> None:
    details = [
        {"path": "params.date", "message": "required"},
        {"path": "params.limit", "message": "must be an integer, not 'ten'"},
    ]
    api.answer(
        "POST", "/pipelines/batch-scoring/runs", envelope("invalid", "2 problems", details), status=422
    )

    result = sluice(api, "run", "batch-scoring", "-p", "limit=ten")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "params.date: required",
        "params.limit: must be an integer, not 'ten'",
    ]


# --- sluice run --wait ---


def _script_success(api: FakeApi) -> None:
    api.answer("POST", "/pipelines/batch-scoring/runs", run_object(), status=201)
    done = [step("prep", "succeeded", [attempt()]), step("score", "succeeded", [attempt(agent="gpu-1")])]
    final = run_object("succeeded", done, started_at=T0, finished_at="2026-11-23T13:02:09Z")
    api.answer_in_turn("GET", f"/runs/{RUN_ID}", [run_object(), final])
    api.answer(
        "GET",
        "/events",
        event_stream(
            ": connected\n\n",
            run_event("running"),
            step_event("prep", "dispatched", 1, "cpu-1"),
            step_event("prep", "running", 1, "cpu-1"),
            step_event("prep", "running", 1, "cpu-1"),  # no change: no line
            run_event("failed", run_id=OTHER_ID),  # another run: ignored
            step_event("other", "failed", run_id=OTHER_ID),
            step_event("prep", "succeeded", 1, "cpu-1"),
            step_event("score", "ready", waiting_reason="no agent has 1 free GPU"),
            ": heartbeat\n\n",
            step_event("score", "running", 1, "gpu-1"),
            step_event("score", "succeeded", 1, "gpu-1"),
            run_event("succeeded"),
            close=False,
        ),
    )


def test_wait_follows_the_event_stream_to_success(api: FakeApi) -> None:
    _script_success(api)

    result = sluice(api, "run", "batch-scoring", "--wait")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == RUN_ID
    assert [re.sub(r", [\d.]+s\)$", ", T)", line) for line in lines[1:]] == [
        f"run {RUN_ID}: running",
        "prep: dispatched (attempt 1, agent cpu-1)",
        "prep: running (attempt 1, agent cpu-1)",
        "prep: succeeded (attempt 1, agent cpu-1, T)",
        "score: ready (waiting: no agent has 1 free GPU)",
        "score: running (attempt 1, agent gpu-1)",
        "score: succeeded (attempt 1, agent gpu-1, T)",
        f"run {RUN_ID}: succeeded",
        f"run {RUN_ID} succeeded in 9.0s",
    ]
    assert api.requested("GET", "/events")[0].query == {"run": RUN_ID}


def test_wait_json_prints_only_the_final_run(api: FakeApi) -> None:
    _script_success(api)

    result = sluice(api, "run", "batch-scoring", "--wait", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "succeeded"


def test_wait_on_a_failed_run_exits_1_naming_the_failed_step(api: FakeApi) -> None:
    api.answer("POST", "/pipelines/batch-scoring/runs", run_object(), status=201)
    failed = attempt(2, "failed", agent="gpu-1", exit_code=3, error="CUDA out of memory\n  at score.py:12")
    steps = [step("prep", "succeeded", [attempt()]), step("score", "failed", [attempt(1, "failed"), failed])]
    api.answer_in_turn("GET", f"/runs/{RUN_ID}", [run_object("running"), run_object("failed", steps)])
    api.answer(
        "GET",
        "/events",
        event_stream(step_event("score", "failed", 2, "gpu-1"), run_event("failed"), close=False),
    )

    result = sluice(api, "run", "batch-scoring", "--wait")

    assert result.exit_code == 1
    assert result.stderr == (
        f"error: step score of run {RUN_ID} failed (attempt 2 on gpu-1, exit code 3): "
        "CUDA out of memory at score.py:12\n"
    )


def test_wait_on_a_cancelled_run_exits_1(api: FakeApi) -> None:
    api.answer("POST", "/pipelines/batch-scoring/runs", run_object(), status=201)
    api.answer("GET", f"/runs/{RUN_ID}", run_object("cancelled", reason="cancelled by a user"))
    api.answer("GET", "/events", event_stream(close=False))

    result = sluice(api, "run", "batch-scoring", "--wait")

    assert result.exit_code == 1
    assert result.stderr == f"error: run {RUN_ID} cancelled: cancelled by a user\n"


def test_wait_polls_when_the_daemon_streams_no_events(api: FakeApi) -> None:
    api.answer("POST", "/pipelines/batch-scoring/runs", run_object(), status=201)
    running = run_object("running", [step("prep", "running", [attempt(status="running", finished_at=None)])])
    done = run_object("succeeded", [step("prep", "succeeded", [attempt()])])
    api.answer_in_turn("GET", f"/runs/{RUN_ID}", [running, running, done])

    result = sluice(api, "run", "batch-scoring", "--wait")

    assert result.exit_code == 0, result.output
    assert "prep: succeeded (attempt 1, agent cpu-1, 3.0s)" in result.stdout.splitlines()
    assert len(api.requested("GET", "/events")) == 1
    assert len(api.requested("GET", f"/runs/{RUN_ID}")) == 3


def test_wait_reconnects_a_broken_stream_a_bounded_number_of_times_then_polls(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "RECONNECT_DELAY", 0.01)
    api.answer("POST", "/pipelines/batch-scoring/runs", run_object(), status=201)
    running = run_object("running")
    api.answer_in_turn(
        "GET", f"/runs/{RUN_ID}", [running] * (follow.STREAM_CONNECTS + 1) + [run_object("succeeded")]
    )
    api.answer("GET", "/events", event_stream("data: {cut off"))  # closes at once, no event

    result = sluice(api, "run", "batch-scoring", "--wait")

    assert result.exit_code == 0, result.output
    assert len(api.requested("GET", "/events")) == follow.STREAM_CONNECTS


def test_ctrl_c_while_waiting_leaves_the_run_and_says_how_to_cancel(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: follow.RunFollower) -> Run:
        raise KeyboardInterrupt

    monkeypatch.setattr(follow.RunFollower, "follow", interrupted)
    api.answer("POST", "/pipelines/batch-scoring/runs", run_object(), status=201)

    result = sluice(api, "run", "batch-scoring", "--wait")

    assert result.exit_code == 1
    assert result.stdout == RUN_ID + "\n"
    assert result.stderr == f"stopped waiting; run {RUN_ID} goes on (cancel: sluice runs cancel {RUN_ID})\n"
    assert [request.method for request in api.requests] == ["POST"]


def test_wait_for_a_run_that_vanished_is_exit_2(api: FakeApi) -> None:
    api.answer("POST", "/pipelines/batch-scoring/runs", run_object(), status=201)
    api.answer("GET", "/events", event_stream(close=False))
    api.answer("GET", f"/runs/{RUN_ID}", envelope("not_found", f"run {RUN_ID} does not exist"), status=404)

    result = sluice(api, "run", "batch-scoring", "--wait")

    assert (result.exit_code, result.stderr) == (2, f"error: run {RUN_ID} does not exist\n")


def test_the_live_table_shows_each_step() -> None:
    view = follow.RunView(RUN_ID)
    now = dt.datetime(2026, 11, 23, 13, 2, 5, tzinfo=dt.UTC)
    steps = [step("prep", "running", [attempt(status="running", finished_at=None)]),
             step("score", "ready", waiting_reason="no agent has 2 free GPUs")]  # fmt: skip
    view.apply_run(msgspec.convert(run_object("running", steps), Run), now)
    console = Console(width=120, record=True)

    console.print(follow.steps_table(view))

    text = console.export_text()
    assert "batch-scoring v3 · run 3f2a9c1e · running" in text
    rows = [line.split() for line in text.splitlines()[1:]]
    assert rows[0] == ["STEP", "STATUS", "ATTEMPT", "AGENT", "ELAPSED", "WAITING"]
    assert rows[1][:4] == ["prep", "running", "1", "cpu-1"]
    assert rows[2] == ["score", "ready", "-", "-", "-", "no", "agent", "has", "2", "free", "GPUs"]


# --- sluice runs ---


def test_runs_lists_the_newest_with_filters_and_a_limit_across_pages(api: FakeApi, local_tz: None) -> None:
    first = run_object("succeeded", started_at=T0, finished_at="2026-11-23T13:04:05Z", trigger="nightly")
    second = run_object("queued") | {"id": OTHER_ID}
    api.answer("GET", "/runs", {"items": [first], "next_cursor": "c2"})
    api.answer("GET", "/runs?pipeline=batch-scoring&status=succeeded&limit=1&cursor=c2",
               {"items": [second, first], "next_cursor": "c3"})  # fmt: skip

    result = sluice(api, "runs", "--pipeline", "batch-scoring", "--status", "succeeded", "--limit", "2")

    assert result.exit_code == 0, result.output
    assert [request.query for request in api.requests] == [
        {"pipeline": "batch-scoring", "status": "succeeded", "limit": "2"},
        {"pipeline": "batch-scoring", "status": "succeeded", "limit": "1", "cursor": "c2"},
    ]
    assert [row.split() for row in result.stdout.splitlines()] == [
        ["ID", "PIPELINE", "VERSION", "STATUS", "TRIGGER", "CREATED", "DURATION"],
        ["3f2a9c1e", "batch-scoring", "3", "succeeded", "nightly", "2026-11-23", "14:02", "2m", "05s"],
        ["0b1c2d3e", "batch-scoring", "3", "queued", "-", "2026-11-23", "14:02", "-"],
    ]


def test_runs_json_and_an_empty_list(api: FakeApi) -> None:
    api.answer("GET", "/runs", {"items": [], "next_cursor": None})

    table = sluice(api, "runs")
    as_json = sluice(api, "runs", "--json")

    assert (table.exit_code, table.stdout, table.stderr) == (0, "", "no runs\n")
    assert json.loads(as_json.stdout) == {"items": []}
    assert api.requests[0].query == {"limit": str(runs.DEFAULT_LIMIT)}


def test_runs_refuses_an_unknown_status_without_a_request(api: FakeApi) -> None:
    result = sluice(api, "runs", "--status", "done")

    assert result.exit_code == 2
    assert api.requests == []


def test_runs_show_prints_the_run_its_steps_attempts_outputs_and_metrics(
    api: FakeApi, local_tz: None
) -> None:
    prep = step("prep", "succeeded", [attempt()], outputs={"features": "/data/runs/r/prep/features"},
                metrics=[{"name": "rows", "value": 1200}, {"name": "note", "value": "ok"}])  # fmt: skip
    score = step(
        "score", "failed", [attempt(1, "lost", agent="gpu-2", exit_code=None, error="agent gpu-2 lost"),
                            attempt(2, "failed", agent="gpu-1", exit_code=3, error="boom")],
    )  # fmt: skip
    waiting = step("report", "pending", waiting_reason="needs score")
    reused = step("lookup", "reused", reused=True)
    times = {"started_at": T0, "finished_at": "2026-11-23T13:03:00Z"}
    body = run_object("failed", [prep, score, waiting, reused], trigger="nightly", event_id=12,
                      reason="step score failed", **times)  # fmt: skip
    api.answer("GET", f"/runs/{RUN_ID}", body)

    result = sluice(api, "runs", "show", RUN_ID)

    assert result.exit_code == 0, result.output
    blocks = [[line.split() for line in block.splitlines()] for block in result.stdout.split("\n\n")]
    assert blocks[0] == [
        ["run", RUN_ID],
        ["pipeline", "batch-scoring", "v3"],
        ["status", "failed:", "step", "score", "failed"],
        ["trigger", "nightly", "(event", "12)"],
        ["params", "date=2026-11-23"],
        ["created", "2026-11-23", "14:02"],
        ["started", "2026-11-23", "14:02"],
        ["finished", "2026-11-23", "14:03"],
        ["duration", "1m", "00s"],
    ]
    assert blocks[1] == [
        ["STEP", "STATUS", "ATTEMPTS", "AGENT", "EXIT", "REUSED", "DURATION", "WAITING"],
        ["prep", "succeeded", "1", "cpu-1", "0", "no", "3.0s"],
        ["score", "failed", "2", "gpu-1", "3", "no", "3.0s"],
        ["report", "pending", "0", "-", "-", "no", "-", "needs", "score"],
        ["lookup", "reused", "0", "-", "-", "yes", "-"],
    ]
    assert blocks[2] == [
        ["STEP", "ATTEMPT", "AGENT", "STATUS", "EXIT", "ERROR"],
        ["score", "1", "gpu-2", "lost", "-", "agent", "gpu-2", "lost"],
        ["score", "2", "gpu-1", "failed", "3", "boom"],
    ]
    assert blocks[3] == [["STEP", "OUTPUT", "PATH"], ["prep", "features", "/data/runs/r/prep/features"]]
    assert blocks[4] == [["STEP", "METRIC", "VALUE"], ["prep", "rows", "1200"], ["prep", "note", "ok"]]


def test_runs_show_json_prints_the_answer(api: FakeApi) -> None:
    api.answer("GET", f"/runs/{RUN_ID}", run_object())

    result = sluice(api, "runs", "show", RUN_ID, "--json")

    assert json.loads(result.stdout) == run_object()


@pytest.mark.parametrize(
    "args", [["runs", "show", "nope"], ["runs", "cancel", "nope"], ["runs", "logs", "nope"]]
)
def test_an_unknown_run_is_exit_2(api: FakeApi, args: list[str]) -> None:
    api.answer("GET", "/runs/nope", envelope("not_found", "run nope does not exist"), status=404)
    api.answer("POST", "/runs/nope/cancel", envelope("not_found", "run nope does not exist"), status=404)

    result = sluice(api, *args)

    assert (result.exit_code, result.stdout, result.stderr) == (2, "", "error: run nope does not exist\n")


@pytest.mark.parametrize(
    ("status", "line"),
    [("cancelled", f"run {RUN_ID} cancelled"), ("running", f"run {RUN_ID} is being cancelled"),
     ("succeeded", f"run {RUN_ID} had already succeeded")],
)  # fmt: skip
def test_runs_cancel(api: FakeApi, status: str, line: str) -> None:
    api.answer("POST", f"/runs/{RUN_ID}/cancel", run_object(status))

    result = sluice(api, "runs", "cancel", RUN_ID)

    assert (result.exit_code, result.stdout) == (0, line + "\n")
    assert [(request.method, request.path) for request in api.requests] == [
        ("POST", f"/api/v1/runs/{RUN_ID}/cancel")
    ]


# --- sluice runs logs ---


def test_logs_of_one_step_and_one_attempt(api: FakeApi) -> None:
    api.answer("GET", f"/runs/{RUN_ID}/steps/prep/logs", "reading\nwrote 1200 rows")

    result = sluice(api, "runs", "logs", RUN_ID, "prep", "--attempt", "2")

    assert (result.exit_code, result.stdout) == (0, "reading\nwrote 1200 rows\n")
    assert api.requests[0].query == {"attempt": "2"}
    assert api.requests[0].headers["Accept"] == "text/plain"


def test_logs_of_every_step_that_ran_in_order_with_headers(api: FakeApi) -> None:
    steps = [step("prep", "succeeded", [attempt()]), step("score", "running", [attempt(status="running")]),
             step("report")]  # fmt: skip
    api.answer("GET", f"/runs/{RUN_ID}", run_object("running", steps))
    api.answer("GET", f"/runs/{RUN_ID}/steps/prep/logs", "prep line\n")
    api.answer("GET", f"/runs/{RUN_ID}/steps/score/logs", "")

    result = sluice(api, "runs", "logs", RUN_ID)

    assert (result.exit_code, result.stdout) == (0, "==> prep <==\nprep line\n\n==> score <==\n")


def test_logs_follow_prints_lines_until_the_end_event(api: FakeApi) -> None:
    def line(text: str, number: int = 1) -> tuple[str, dict[str, Any]]:
        return ("line", {"attempt": number, "stream": "stdout", "line": text})

    api.answer(
        "GET",
        f"/runs/{RUN_ID}/steps/score/logs",
        event_stream(line("loading"), ": ping\n\n", line("oom", 1), line("retrying\n", 2),
                     ("end", {"status": "succeeded"}), line("after the end"), close=False),
    )  # fmt: skip

    result = sluice(api, "runs", "logs", RUN_ID, "score", "--follow")

    assert (result.exit_code, result.stdout) == (0, "loading\noom\n==> attempt 2 <==\nretrying\n")
    assert api.requests[0].query == {"follow": "true"}


def test_logs_follow_that_breaks_before_the_end_is_exit_1(api: FakeApi) -> None:
    api.answer("GET", f"/runs/{RUN_ID}/steps/score/logs", event_stream(("line", {"line": "half"})))

    result = sluice(api, "runs", "logs", RUN_ID, "score", "-f")

    assert result.exit_code == 1
    assert result.stdout == "half\n"
    assert result.stderr == f"error: the log stream of step score of run {RUN_ID} ended before the step did\n"


def test_logs_follow_needs_a_step(api: FakeApi) -> None:
    result = sluice(api, "runs", "logs", RUN_ID, "--follow")

    assert result.exit_code == 2
    assert "--attempt and --follow need a STEP" in result.stderr
    assert api.requests == []


# --- sluice agents ---


def test_agents_table_with_human_sizes_and_heartbeat_ages(api: FakeApi) -> None:
    beat = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)).isoformat()
    gpu = {"index": 0, "name": "H100", "memory": 80 * 2**30}
    item = {"id": "a1", "name": "gpu-box", "labels": {"zone": "eu", "arch": "x86"}, "executors": ["process"],
            "capacity": {"cpu": 16.0, "memory": 64 * 2**30, "gpus": [gpu, gpu | {"index": 1}]},
            "free": {"cpu": 3.5, "memory": int(3.5 * 2**30), "gpu": 1}, "running": [7, 8],
            "last_heartbeat": beat, "status": "ready"}  # fmt: skip
    half = 512 * 2**20
    cpu_only = item | {"name": "cpu-box", "labels": {}, "capacity": {"cpu": 8, "memory": half, "gpus": []},
                       "free": {"cpu": 8, "memory": half, "gpu": 0}, "running": [], "status": "lost",
                       "last_heartbeat": None}  # fmt: skip
    api.answer("GET", "/agents", {"items": [item, cpu_only], "next_cursor": None})

    result = sluice(api, "agents")

    assert result.exit_code == 0, result.output
    header, *rows = [line.split() for line in result.stdout.splitlines()]
    assert header == ["NAME", "STATUS", "CPU", "MEMORY", "GPUS", "LABELS", "RUNNING", "LAST", "HEARTBEAT"]
    assert rows[0][:8] == [
        "gpu-box",
        "ready",
        "3.5/16",
        "3.5Gi/64Gi",
        "1/2",
        "2x",
        "H100",
        "arch=x86,zone=eu",
    ]
    assert rows[0][8] == "2"
    assert re.fullmatch(r"[2-9]s ago", " ".join(rows[0][9:]))
    assert rows[1] == ["cpu-box", "lost", "8/8", "512Mi/512Mi", "-", "-", "0", "-"]


def test_agents_json_and_none(api: FakeApi) -> None:
    api.answer("GET", "/agents", {"items": [], "next_cursor": None})

    assert sluice(api, "agents").stderr == "no agents\n"
    assert json.loads(sluice(api, "agents", "--json").stdout) == {"items": []}


# --- the pieces ---


def test_every_command_has_help() -> None:
    assert_help_everywhere(CLI)


def test_parse_events_follows_the_sse_rules() -> None:
    lines = ["retry: 100\n", ": comment\n", "event: step\r\n", 'data: {"a":\n', "data:1}\n", "id: 7\n",
             "\n", "data: plain\n", "\n", "event: empty\n", "\n", "data:  two spaces\n", "\n",
             "data: cut"]  # fmt: skip

    events = list(parse_events(lines))

    assert events == [
        ServerSentEvent("step", '{"a":\n1}', "7"),
        ServerSentEvent("message", "plain", "7"),
        ServerSentEvent("message", " two spaces", "7"),
    ]
    assert events[0].json() == {"a": 1}


def test_a_silent_stream_times_out_and_an_error_status_is_an_api_error(api: FakeApi) -> None:
    api.answer("GET", "/events", event_stream(": hello\n\n", close=False))
    api.answer("GET", "/broken", envelope("not_found", "no such stream"), status=404)
    client = ApiClient(api.url, timeout=2)

    with (
        client.stream("/events", idle_timeout=0.2) as events,
        pytest.raises(ApiUnreachable, match=r"silent for 0\.2 s"),
    ):
        list(events)
    with pytest.raises(Exception, match="no such stream") as raised:
        client.stream("/broken")
    assert output.exit_code(raised.value.status) == 2


def test_a_json_answer_is_not_an_event_stream(api: FakeApi) -> None:
    api.answer("GET", "/events", {"items": []})

    with pytest.raises(Exception, match="with application/json, not an event stream"):
        ApiClient(api.url).stream("/events")


@pytest.mark.parametrize(
    ("size", "text"),
    [(None, "-"), (0, "0"), (512, "512"), (1024, "1Ki"), (1536, "1.5Ki"), (3.5 * 2**30, "3.5Gi"),
     (16 * 2**30, "16Gi"), (2**40, "1Ti")],
)  # fmt: skip
def test_format_size(size: float | None, text: str) -> None:
    assert output.format_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (-1, "0.0s"), (0.42, "0.4s"), (42, "42s"), (245, "4m 05s"), (7380, "2h 03m"),
     (3 * 86400 + 4 * 3600, "3d 04h")],
)  # fmt: skip
def test_format_duration(seconds: float | None, text: str) -> None:
    assert output.format_duration(seconds) == text


def test_format_age() -> None:
    now = dt.datetime(2026, 11, 23, 13, 0, 0, tzinfo=dt.UTC)
    ages = {"2026-11-23T12:59:58Z": "2s ago", "2026-11-23T12:55:00+00:00": "5m ago",
            "2026-11-23T10:00:00": "3h ago", "2026-11-21T13:00:00Z": "2d ago",
            "2026-11-23T13:00:05Z": "0s ago", None: "-"}  # fmt: skip
    assert {value: output.format_age(value, now=now) for value in ages} == ages


def test_runs_show_says_why_the_run_exists_and_why_each_step_was_reused_or_not(api: FakeApi) -> None:
    reused = {"outcome": "reused", "reason": f"nothing changed: the outputs of step prep of run {OTHER_ID}"}
    executed = {"outcome": "executed", "reason": f"changed since run {OTHER_ID}: parameter model",
                "changed": ["parameter model"]}  # fmt: skip
    steps = [step("prep", "reused", reused=True, reuse=reused), step("score", "succeeded", reuse=executed)]
    body = run_object("succeeded", steps, trigger="nightly", event_id=7, resolution="default")
    api.answer("GET", f"/runs/{RUN_ID}", body)

    result = sluice(api, "runs", "show", RUN_ID)

    assert result.exit_code == 0, result.output
    blocks = [[line.split() for line in block.splitlines()] for block in result.stdout.split("\n\n")]
    assert blocks[0][1] == ["pipeline", "batch-scoring", "v3", "(the", "default", "version", "when", "the",
                            "run", "was", "created)"]  # fmt: skip
    assert blocks[0][3] == ["trigger", "nightly", "(event", "7)"]
    assert blocks[2] == [
        ["STEP", "REUSE", "WHY"],
        ["prep", "reused", *reused["reason"].split()],
        ["score", "executed", *executed["reason"].split()],
    ]
