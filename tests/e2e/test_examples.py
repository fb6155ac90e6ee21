"""The data-arrival and message-bus examples, applied and fired as their README sections say."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import msgspec
import nats

from tests.e2e.sluice import cli, cli_json, wait_for

EXAMPLES = Path(__file__).parents[2] / "examples"


def finished_runs(env: dict[str, str], pipeline: str) -> list[dict]:
    runs = cli_json("runs", "--pipeline", pipeline, env=env)["items"]
    return [run for run in runs if run["status"] in ("succeeded", "failed", "cancelled")]


def test_files_arriving_in_the_inbox_each_start_one_run(sluice_up, tmp_path: Path) -> None:
    example = Path(shutil.copytree(EXAMPLES / "data-arrival", tmp_path / "data-arrival"))
    inbox = tmp_path / "inbox"
    (inbox / "incoming" / "partner-a").mkdir(parents=True)
    datastore = example / "datastore.yaml"
    datastore.write_text(datastore.read_text().replace("/tmp/sluice-examples/inbox", str(inbox)))
    trigger = example / "trigger.yaml"
    trigger.write_text(trigger.read_text().replace("settle: 2s", "settle: 0.3s"))
    env = sluice_up().client_env
    assert cli("apply", "-f", str(example), env=env).returncode == 0

    (inbox / "incoming" / "partner-a" / "one.csv").write_text("id\n1\n2\n")
    (inbox / "incoming" / "two.csv").write_text("id\n1\n")
    (inbox / "incoming" / "ignored.txt").write_text("not a csv\n")

    runs = wait_for(lambda: (found := finished_runs(env, "count-rows")) and len(found) >= 2 and found, 60)
    assert sorted(run["params"]["path"] for run in runs) == ["incoming/partner-a/one.csv", "incoming/two.csv"]
    assert {run["status"] for run in runs} == {"succeeded"}
    rows = {}
    for run in runs:
        (step,) = cli_json("runs", "show", run["id"], env=env)["steps"]
        rows[run["params"]["path"]] = [metric["value"] for metric in step["metrics"]]
    assert rows == {"incoming/partner-a/one.csv": [2], "incoming/two.csv": [1]}


def test_a_service_message_starts_a_run_and_the_service_sees_its_outcome(sluice_up, tmp_path: Path) -> None:
    sluice = sluice_up()
    env = sluice.client_env
    assert cli("apply", "-f", str(EXAMPLES / "message-bus"), env=env).returncode == 0

    async def publish() -> list[tuple[str, dict]]:
        nc = await nats.connect(sluice.nats_url)
        outcomes: list[tuple[str, dict]] = []
        done = asyncio.Event()

        async def follow(msg) -> None:
            outcomes.append((msg.subject, json.loads(msg.data)))
            if msg.subject.endswith((".succeeded", ".failed")):
                done.set()

        try:
            await nc.subscribe("sluice.runs.score-customer.*", cb=follow)
            partial = {"customer": "c-007", "kind": "partial", "priority": 1}
            await nc.publish("scoring.requests.team-a", msgspec.json.encode(partial))  # filtered out
            full = {"customer": "c-042", "kind": "full", "priority": 2}
            await nc.publish("scoring.requests.team-a", msgspec.json.encode(full))
            await asyncio.wait_for(done.wait(), 60)
            return outcomes
        finally:
            await nc.drain()

    outcomes = asyncio.run(publish())
    subject, run = outcomes[-1]
    assert subject == "sluice.runs.score-customer.succeeded"
    assert run["params"] == {"customer": "c-042", "priority": 2}
    assert [item["params"]["customer"] for item in finished_runs(env, "score-customer")] == ["c-042"]
