"""What a new user does first: `sluice up` with its local agent, a pipeline, a run; the batch-scoring
example from examples/ runs to success as it is shipped."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.sluice import api_get, apply, cli, show_run, steps_of, wait_for

EXAMPLE = Path(__file__).parents[2] / "examples" / "batch-scoring"
pytestmark = pytest.mark.e2e

HELLO = """
kind: Pipeline
name: hello
params:
  who: {type: string}
steps:
  - name: greet
    command: [echo, "hello ${params.who}"]
"""


def test_up_with_its_local_agent_runs_a_pipeline(sluice_up) -> None:
    sluice = sluice_up()  # --agents 1 by default
    env = sluice.client_env
    apply(HELLO, env)

    result = cli("run", "hello", "-p", "who=world", "--wait", env=env, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.splitlines()[0].strip()
    assert f"run {run_id} succeeded" in result.stdout
    logs = cli("runs", "logs", run_id, "greet", env=env)
    assert logs.stdout == "hello world\n"
    agents = api_get("/agents", env)["items"]
    assert [agent["name"] for agent in agents] == ["local"]
    assert steps_of(show_run(run_id, env))["greet"]["attempts"][0]["agent"] == "local"


def test_the_batch_scoring_example_runs_to_success(sluice_up, sluice_agent, tmp_path: Path) -> None:
    example = Path(shutil.copytree(EXAMPLE, tmp_path / "batch-scoring"))
    landing = tmp_path / "landing"
    datastore = example / "datastore.yaml"
    datastore.write_text(datastore.read_text().replace("/tmp/sluice-examples/landing", str(landing)))
    day = landing / "customers" / "2026-11-23"
    day.mkdir(parents=True)
    for sample in (example / "sample").glob("*.csv"):
        shutil.copy(sample, day)
    sluice = sluice_up()
    env = sluice.client_env
    # The tour's GPU agent: score runs only on an agent labelled accelerator=gpu with a free GPU.
    sluice_agent(sluice, "gpu-1", "--labels", "accelerator=gpu", "--gpus", "1")
    applied = cli("apply", "-f", str(example), env=env)
    assert applied.returncode == 0, applied.stderr

    result = cli("run", "batch-scoring", "-p", "date=2026-11-23", "--wait", env=env, timeout=90)

    assert result.returncode == 0, result.stdout + result.stderr
    run = show_run(result.stdout.splitlines()[0].strip(), env)
    steps = steps_of(run)
    # Three files, two a partition: score[0] scores north and south, score[1] west.
    assert {name for name in steps if name.startswith("score[")} == {"score[0]", "score[1]"}
    for name in ("score", "score[0]", "score[1]", "report"):
        assert steps[name]["status"] == "succeeded", steps[name]
    assert steps["score[1]"]["partition_of"] == "score"
    scores = Path(steps["score[0]"]["outputs"]["scores"]).parent  # the step records none of its own
    assert sorted(part.name for part in scores.iterdir()) == ["part-00000", "part-00001"]
    report = json.loads(Path(steps["report"]["outputs"]["report"], "report.json").read_text())
    assert report["scores"] == [
        {"customer": "c-001", "score": 0.12},
        {"customer": "c-002", "score": 0.98},
        {"customer": "c-003", "score": 1.0},
        {"customer": "c-004", "score": 0.035},
        {"customer": "c-005", "score": 0.61},
    ]
    assert [(m["name"], m["value"]) for m in steps["report"]["metrics"]] == [("customers_scored", 5)]
    assert steps["score[0]"]["attempts"][0]["agent"] == "gpu-1"
    assert steps["score[1]"]["attempts"][0]["agent"] == "gpu-1"
    assert [attempt["agent"] for attempt in steps["report"]["attempts"]] == ["local"]
    score_log = cli("runs", "logs", run["id"], "score[0]", env=env)
    assert "scored 4 customers (customers-north.csv, customers-south.csv) with model prod on GPU 0" in (
        score_log.stdout
    ), score_log.stderr
    report_log = cli("runs", "logs", run["id"], "report", env=env).stdout
    assert "reported 5 customers from 2 parts for 2026-11-23" in report_log


def test_up_stops_promptly_while_a_client_waits_on_a_run(sluice_up, background) -> None:
    sluice = sluice_up("--agents", "0")
    env = sluice.client_env
    apply(HELLO, env)
    waiting = background("run", "hello", "-p", "who=nobody", "--wait", env=env)
    wait_for(lambda: "greet: ready" in waiting.output, timeout=20)  # no agent: it waits, streaming

    assert sluice.stop() == 0
    # Not held up by the open event stream (the HTTP server would wait 5 s for it): measured by the
    # daemon's own clock, which a loaded test machine does not stretch as much as process start-up.
    stopping, stopped = (logged_at(sluice.output, event) for event in ("daemon_stopping", "daemon_stopped"))
    assert stopped - stopping < 4.0


def logged_at(output: list[str], event: str) -> float:
    """When the JSON log line of ``event`` was written (epoch seconds)."""
    for line in output:
        if line.startswith("{") and (record := json.loads(line)).get("event") == event:
            return datetime.fromisoformat(record["timestamp"]).timestamp()
    raise AssertionError(f"no {event} in the log")
