"""`sluice triggers test` with real `sluice` processes: a cron fire at a given time and a file in a
datastore give the params the trigger templates from them, as the live event does; nothing is
recorded; bad input is a clear error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.sluice import api_all, api_get, apply, cli, cli_json, wait_for

pytestmark = pytest.mark.e2e

DOCUMENTS = """
kind: Datastore
name: landing
type: local
path: {landing}
---
kind: Pipeline
name: score
params:
  day: {{type: string}}
steps:
  - name: one
    command: [python3, -c, "pass", "${{params.day}}"]
    resources: {{cpu: 0.1, memory: 16Mi}}
---
kind: Trigger
name: nightly
pipeline: score
on: {{cron: "0 2 * * *", timezone: Europe/Madrid}}
params: {{day: "${{event.scheduled_date}}"}}
---
kind: Trigger
name: arrivals
pipeline: score
on: {{files: {{datastore: landing, pattern: "in/*.csv", settle: 0.3s}}}}
params: {{day: "${{event.path}}"}}
"""


def counts(env: dict[str, str]) -> tuple[int, int]:
    events = sum(len(api_all(f"/triggers/{name}/events", env)) for name in ("nightly", "arrivals"))
    return len(api_all("/runs", env)), events


def test_trigger_tests_give_the_event_s_run(sluice_daemon, sluice_agent, tmp_path: Path) -> None:
    env = sluice_daemon.client_env
    sluice_agent(sluice_daemon, "worker", "--cpus", "1", "--memory", "1Gi", "--gpus", "0")
    landing = tmp_path / "landing"
    (landing / "in").mkdir(parents=True)
    apply(DOCUMENTS.format(landing=landing), env)

    before = counts(env)
    fire = cli_json("triggers", "test", "nightly", "--at", "2026-03-01T02:00", env=env)
    assert fire["outcome"] == "run"
    assert fire["params"] == {"day": "2026-03-01"}
    assert fire["event"]["fields"]["scheduled_time"] == "2026-03-01T02:00:00+01:00"
    assert (fire["trigger"], fire["version"], fire["resolution"]) == ("nightly", 1, "default")
    assert fire["steps"][0]["agent"] == "worker"
    assert cli_json("triggers", "test", "nightly", env=env)["outcome"] == "run"  # the next fire
    bad_at = cli("triggers", "test", "nightly", "--at", "yesterday", env=env)
    assert bad_at.returncode == 2
    assert "at:" in bad_at.stderr
    assert "Traceback" not in bad_at.stderr
    wrong = cli("triggers", "test", "nightly", "--file", "in/a.csv", env=env)
    assert wrong.returncode == 2
    assert "file" in wrong.stderr
    not_json = cli("triggers", "test", "nightly", "--event", "{oops", env=env)
    assert not_json.returncode == 2
    assert "--event" in not_json.stderr
    assert "JSON" in not_json.stderr
    assert cli("triggers", "test", "nosuch", env=env).returncode == 2
    absent = cli("triggers", "test", "arrivals", "--file", "in/day1.csv", env=env)
    assert absent.returncode == 2
    assert "no file" in absent.stderr
    assert counts(env) == before

    # The live event of the file, then the test of the same file: the same event, the same run.
    (landing / "in" / "day1.csv").write_text("1,2\n")
    event = wait_for(
        lambda: next(iter(api_all("/triggers/arrivals/events", env)), None), timeout=30, interval=0.2
    )
    assert event["outcome"] == "run", event
    run = api_get(f"/runs/{event['run_id']}", env)
    before = counts(env)
    tested = cli_json("triggers", "test", "arrivals", "--file", "in/day1.csv", env=env)
    assert counts(env) == before
    assert tested["event"]["dedupe_key"] == event["dedupe_key"]
    assert tested["outcome"] == "duplicate"  # the sink would answer the repeat so
    assert event["run_id"] in tested["reason"]
    assert (tested["version"], tested["params"], tested["resolution"]) == (
        run["version"],
        run["params"],
        run["resolution"],
    )
    ignored = cli_json("triggers", "test", "arrivals", "--file", "../landing/in/day1.csv", env=env)
    assert ignored["params"] == {"day": "in/day1.csv"}  # the same file, however it is written
    (landing / "other.txt").write_text("x")
    assert cli_json("triggers", "test", "arrivals", "--file", "other.txt", env=env)["outcome"] == "ignored"
    outside = cli("triggers", "test", "arrivals", "--file", "../../etc/passwd", env=env)
    assert outside.returncode == 2
    assert "file:" in outside.stderr

    # A paused trigger's event is skipped, and says why.
    assert cli("triggers", "pause", "nightly", env=env).returncode == 0
    paused = cli_json("triggers", "test", "nightly", env=env)
    assert paused["outcome"] == "skipped"
    assert "paused" in paused["reason"]
