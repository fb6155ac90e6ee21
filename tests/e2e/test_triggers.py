"""Triggers' promises, end to end with a real `sluice up` (one local agent), driven through the CLI and
NATS as a user and another service would: a cron trigger every second, an event whose params do not
validate shown by `sluice triggers events`, and `sluice.submit.<pipeline>` with a follower of
`sluice.runs.<pipeline>.*`."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from datetime import datetime
from pathlib import Path

import msgspec
import nats
import pytest

from tests.e2e.sluice import cli, cli_json, wait_for

pytestmark = pytest.mark.e2e

DOCUMENTS = """
kind: Pipeline
name: tick
params:
  at: {type: string}
  rows: {type: integer, default: 1}
steps:
  - name: only
    command: ["true", "${params.at}", "${params.rows}"]
---
kind: Trigger
name: every-second
pipeline: tick
on:
  cron: "* * * * * *"
  catchup: none
params:
  at: "${event.scheduled_time}"
---
kind: Trigger
name: orders
pipeline: tick
on:
  nats: {subject: "e2e.orders"}
params:
  at: "${event.data.at}"
  rows: "${event.data.rows}"
"""


def runs_of(env: dict[str, str], pipeline: str) -> list[dict]:
    return cli_json("runs", "--pipeline", pipeline, "--limit", "500", env=env)["items"]


def test_cron_every_second_starts_one_run_per_second(sluice_up, tmp_path: Path) -> None:
    sluice = sluice_up()
    env = sluice.client_env
    (tmp_path / "docs.yaml").write_text(DOCUMENTS)
    applied = cli("apply", "-f", str(tmp_path / "docs.yaml"), env=env)
    assert applied.returncode == 0, applied.stderr

    wait_for(
        lambda: len([r for r in runs_of(env, "tick") if r["trigger"] == "every-second"]) >= 4, timeout=20
    )
    paused = cli("triggers", "pause", "every-second", env=env)
    assert paused.returncode == 0, paused.stderr
    time.sleep(0.5)
    ticks = [run for run in runs_of(env, "tick") if run["trigger"] == "every-second"]
    times = sorted(datetime.fromisoformat(run["params"]["at"]) for run in ticks)
    assert len(times) == len(set(times)), "one run per scheduled second"
    assert all(when.microsecond == 0 for when in times)
    assert all((later - earlier).total_seconds() == 1 for earlier, later in itertools.pairwise(times))
    time.sleep(2)
    assert len([run for run in runs_of(env, "tick") if run["trigger"] == "every-second"]) == len(ticks)

    listed = {item["name"]: item for item in cli_json("triggers", env=env)["items"]}
    assert listed["every-second"]["paused"] is True
    assert listed["orders"]["status"]["active"] is True


def test_invalid_params_event_shows_in_triggers_events_and_submit_replies(sluice_up, tmp_path: Path) -> None:
    sluice = sluice_up()
    env = sluice.client_env
    (tmp_path / "docs.yaml").write_text(DOCUMENTS.replace('"* * * * * *"', '"0 0 1 1 *"'))
    assert cli("apply", "-f", str(tmp_path / "docs.yaml"), env=env).returncode == 0

    async def talk() -> tuple[dict, list[tuple[str, dict]]]:
        nc = await nats.connect(sluice.nats_url, user_credentials=sluice.service_creds)
        seen: list[tuple[str, dict]] = []
        finished = asyncio.Event()

        async def follow(msg) -> None:
            seen.append((msg.subject, json.loads(msg.data)))
            if msg.subject.endswith((".succeeded", ".failed")):
                finished.set()

        try:
            await nc.subscribe("sluice.runs.tick.*", cb=follow)
            await nc.publish("e2e.orders", msgspec.json.encode({"at": "now", "rows": "many"}))
            reply = await nc.request(
                "sluice.submit.tick",
                msgspec.json.encode({"params": {"at": "submitted", "rows": 2}}),
                timeout=10,
            )
            await asyncio.wait_for(finished.wait(), 30)
            return json.loads(reply.data), seen
        finally:
            await nc.drain()

    reply, seen = asyncio.run(talk())
    assert "run_id" in reply, reply
    assert ("sluice.runs.tick.succeeded", reply["run_id"]) in [(subject, run["id"]) for subject, run in seen]

    def rejected() -> dict | None:
        items = cli_json("triggers", "events", "orders", env=env)["items"]
        return items[0] if items else None

    event = wait_for(rejected, timeout=10)
    assert event["outcome"] == "rejected"
    assert event["run_id"] is None
    assert "params.rows" in event["reason"]
    assert "many" in event["reason"]
    table = cli("triggers", "events", "orders", env=env)
    assert table.returncode == 0
    assert "rejected" in table.stdout
    assert [run for run in runs_of(env, "tick") if run["trigger"] == "orders"] == []
