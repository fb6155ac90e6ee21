"""Backfills end to end, with real `sluice up` processes and agents: an hourly cron trigger replayed
over three days of 2024.

- over a window where some fires already ran (an earlier backfill over its middle day), exactly the
  missing fires make runs, the others are duplicates; at most ``--max-active 2`` of its runs are active
  at any moment (polled during the backfill, and from the runs' start and end times after it); an
  identical backfill then makes nothing;
- a daemon killed with -9 in the middle of a backfill and started again finishes it: every fire has
  one event and one run;
- bad requests are refused with the field named (a ``to`` in the future too), and a ``read`` token
  may not start or cancel one; a backfill whose trigger's source changes under it fails, with why.
"""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.sluice import FAST_TIMINGS, api_all, api_get, api_request, apply, cli, wait_for

pytestmark = pytest.mark.e2e

DOCUMENTS = """
kind: Pipeline
name: hourly
params:
  at: {type: string}
steps:
  - name: score
    command: ["sleep", "0.15"]
    env: {AT: "${params.at}"}
    resources: {cpu: 0.1}
---
kind: Trigger
name: every-hour
pipeline: hourly
on:
  cron: "0 * * * *"
  catchup: none
params:
  at: "${event.scheduled_time}"
"""
FIRES = 72  # 2024-01-01 to 2024-01-04, hourly


def post(env: dict[str, str], api_path: str, body: dict | None = None, token: str | None = None) -> tuple:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    data = json.dumps(body or {}).encode()
    request = api_request(api_path, env, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def backfill(env: dict[str, str], *args: str) -> dict:
    """`sluice triggers backfill every-hour … --wait --json`: the backfill as it ended."""
    result = cli("triggers", "backfill", "every-hour", *args, "--wait", "--json", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def fire_events(env: dict[str, str]) -> list[dict]:
    return api_all("/triggers/every-hour/events", env)


def assert_each_fire_ran_once(env: dict[str, str]) -> None:
    events = fire_events(env)
    keys = Counter(event["dedupe_key"] for event in events)
    assert (len(keys), set(keys.values())) == (FIRES, {1}), keys
    assert all(event["outcome"] == "run" for event in events)
    runs = api_all("/runs?trigger=every-hour", env)
    assert len(runs) == FIRES
    assert Counter(run["params"]["at"] for run in runs).most_common(1)[0][1] == 1
    assert {run["id"] for run in runs} == {event["run_id"] for event in events}


def most_overlapping(runs: list[dict]) -> int:
    """The most runs running at one instant, from their start and end times."""
    edges = sorted(
        itertools.chain.from_iterable(
            ((datetime.fromisoformat(run["started_at"]), 1), (datetime.fromisoformat(run["finished_at"]), -1))
            for run in runs
        ),
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same instant
    )
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


@pytest.mark.timeout(180)
def test_a_backfill_makes_only_the_missing_fires_with_at_most_two_active(
    sluice_up, sluice_agent, base_env: dict[str, str]
) -> None:
    daemon = sluice_up("--agents", "0", env=base_env | FAST_TIMINGS)
    env = daemon.client_env
    sluice_agent(daemon, "wide", "--cpus", "8")
    apply(DOCUMENTS, env)

    first = backfill(env, "--from", "2024-01-02", "--to", "2024-01-03", "--max-active", "8")
    assert (first["status"], first["total"], first["counts"]["runs"], first["counts"]["succeeded"]) == (
        "succeeded",
        24,
        24,
        24,
    )

    created = cli(
        "triggers", "backfill", "every-hour", "--from", "2024-01-01T00:00:00Z", "--to", "2024-01-04",
        "--max-active", "2", "--json", env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    backfill_id = json.loads(created.stdout)["id"]
    most_active = 0

    def ended() -> dict | None:
        nonlocal most_active
        seen = api_get(f"/backfills/{backfill_id}", env)
        most_active = max(most_active, seen["counts"]["active"])
        return seen if seen["status"] != "running" else None

    second = wait_for(ended, timeout=120, interval=0.02)
    counts = second["counts"]
    assert second["status"] == "succeeded", second
    assert (second["total"], counts["offered"], counts["runs"], counts["duplicates"]) == (
        FIRES,
        FIRES,
        48,
        24,
    )
    assert (counts["succeeded"], counts["failed"]) == (48, 0)
    assert 1 <= most_active <= 2
    ours = {event["run_id"] for event in fire_events(env)} - {
        run["id"] for run in api_all("/runs?trigger=every-hour", env) if "2024-01-02" in run["params"]["at"]
    }
    runs = [run for run in api_all("/runs?trigger=every-hour", env) if run["id"] in ours]
    assert len(runs) == 48
    assert most_overlapping(runs) == 2  # the limit held, and was used
    assert_each_fire_ran_once(env)

    again = backfill(env, "--from", "2024-01-01", "--to", "2024-01-04")
    assert again["status"] == "succeeded"
    assert (again["counts"]["runs"], again["counts"]["duplicates"]) == (0, FIRES)
    assert_each_fire_ran_once(env)
    listed = cli("backfills", "--json", env=env)
    assert [item["id"] for item in json.loads(listed.stdout)["items"]] == [
        again["id"],
        backfill_id,
        first["id"],
    ]


@pytest.mark.timeout(180)
def test_a_backfill_killed_with_its_daemon_resumes_and_runs_each_fire_once(
    sluice_up, tmp_path: Path, base_env: dict[str, str]
) -> None:
    data_dir = tmp_path / "state"
    daemon = sluice_up("--agents", "1", data_dir=data_dir, env=base_env | FAST_TIMINGS)
    env = daemon.client_env
    apply(DOCUMENTS, env)
    status, created = post(
        env, "/triggers/every-hour/backfills", {"from": "2024-01-01", "to": "2024-01-04", "max_active": 3}
    )
    assert status == 201, created
    backfill_id = created["id"]
    wait_for(lambda: api_get(f"/backfills/{backfill_id}", env)["counts"]["offered"] >= 9, timeout=60)
    daemon.kill()
    assert api_get_or_none(f"/backfills/{backfill_id}", env) is None

    daemon = sluice_up("--agents", "1", data_dir=data_dir, env=base_env | FAST_TIMINGS)
    env = daemon.client_env
    done = wait_for(
        lambda: (b := api_get(f"/backfills/{backfill_id}", env))["status"] != "running" and b, timeout=120
    )
    assert done["status"] == "succeeded", done
    assert (done["counts"]["offered"], done["counts"]["runs"], done["counts"]["duplicates"]) == (
        FIRES,
        FIRES,
        0,
    )
    assert_each_fire_ran_once(env)


def api_get_or_none(api_path: str, env: dict[str, str]) -> dict | None:
    try:
        return api_get(api_path, env)
    except OSError:
        return None


@pytest.mark.timeout(120)
def test_bad_backfills_are_refused_naming_the_field(sluice_daemon) -> None:
    env = sluice_daemon.client_env
    apply(
        DOCUMENTS
        + """
---
kind: Trigger
name: orders
pipeline: hourly
on:
  nats: {subject: orders.new}
params:
  at: "${event.time}"
---
kind: Trigger
name: every-second
pipeline: hourly
on:
  cron: "* * * * * *"
params:
  at: "${event.scheduled_time}"
""",
        env,
    )
    day = {"from": "2024-01-01", "to": "2024-01-02"}

    def refused(name: str, body: dict) -> tuple[int, str]:
        status, answer = post(env, f"/triggers/{name}/backfills", body)
        return status, answer["error"]["message"]

    assert refused("nobody", day)[0] == 404
    status, message = refused("orders", day)
    assert (status, message.startswith("trigger:") and "nats" in message) == (422, True)
    status, message = refused("every-hour", {"from": "2024-01-02", "to": "2024-01-01"})
    assert (status, message.startswith("to:")) == (422, True)
    status, message = refused("every-hour", {"from": "2024-01-01", "to": "2999-01-01"})
    assert (status, message.startswith("to:"), "later than now" in message) == (422, True, True)
    status, message = refused("every-hour", {"from": "yesterday", "to": "2024-01-01"})
    assert (status, message.startswith("from:")) == (422, True)
    status, message = refused("every-second", {"from": "2024-01-01", "to": "2024-01-03"})
    assert (status, "100,000" in message) == (422, True)
    status, message = refused("every-hour", day | {"version": 7})
    assert (status, message.startswith("version:")) == (404, True)
    status, message = refused("every-hour", day | {"max_active": 0})
    assert (status, "max_active" in message) == (400, True)
    assert cli("triggers", "pause", "every-hour", env=env).returncode == 0
    status, message = refused("every-hour", day)
    assert (status, "paused" in message) == (409, True)
    assert cli("triggers", "resume", "every-hour", env=env).returncode == 0
    failed = cli("triggers", "backfill", "orders", "--from", "2024-01-01", "--to", "2024-01-02", env=env)
    assert (failed.returncode, "trigger:" in failed.stderr) == (2, True)  # bad input

    made = cli("tokens", "create", "reader", "--scope", "read", env=env)
    assert made.returncode == 0, made.stderr
    reader = made.stdout.strip()
    assert post(env, "/triggers/every-hour/backfills", day, token=reader)[0] == 403
    status, created = post(env, "/triggers/every-hour/backfills", day | {"max_active": 1})
    assert status == 201, created  # no agent: its first run stays queued, the rest wait for its slot
    assert post(env, f"/backfills/{created['id']}/cancel", token=reader)[0] == 403
    wait_for(lambda: api_get(f"/backfills/{created['id']}", env)["counts"]["runs"] == 1, timeout=20)
    cancelled = cli("backfills", "cancel", str(created["id"]), env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    seen = api_get(f"/backfills/{created['id']}", env)
    assert (seen["status"], seen["counts"]["runs"], seen["counts"]["active"]) == ("cancelled", 1, 1)
    assert post(env, "/backfills/999/cancel")[0] == 404

    # A trigger whose source changes under its backfill: the backfill fails, with the reason.
    status, created = post(env, "/triggers/every-hour/backfills", day | {"max_active": 1})
    assert status == 201, created
    wait_for(lambda: api_get(f"/backfills/{created['id']}", env)["counts"]["runs"] == 1, timeout=20)
    apply(NATS_EVERY_HOUR, env)
    ended = wait_for(
        lambda: (b := api_get(f"/backfills/{created['id']}", env))["status"] != "running" and b, timeout=20
    )
    assert (ended["status"], "nats" in (ended["reason"] or "")) == ("failed", True), ended


NATS_EVERY_HOUR = """
kind: Trigger
name: every-hour
pipeline: hourly
on:
  nats: {subject: hours.new}
params:
  at: "${event.time}"
"""
