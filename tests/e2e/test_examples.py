"""The three examples of examples/ (batch scoring, data arrival, the message bus), applied and fired
end to end through the CLI, as the README's tour uses them."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import nats

from tests.e2e.sluice import api_get, cli, cli_json, show_run, steps_of, wait_for

EXAMPLES = Path(__file__).parents[2] / "examples"
FINISHED = ("succeeded", "failed", "cancelled")


def finished_runs(env: dict[str, str], pipeline: str) -> list[dict]:
    runs = cli_json("runs", "--pipeline", pipeline, env=env)["items"]
    return [run for run in runs if run["status"] in FINISHED]


def runs_of(env: dict[str, str], pipeline: str) -> list[dict]:
    """The pipeline's runs, oldest first (through the API: polls would pay a CLI start each)."""
    runs = api_get(f"/runs?pipeline={pipeline}&limit=100", env)["items"]
    return sorted(runs, key=lambda run: run["created_at"])


def all_finished(env: dict[str, str], pipeline: str) -> list[dict] | None:
    runs = runs_of(env, pipeline)
    return runs if runs and all(run["status"] in FINISHED for run in runs) else None


def test_the_nightly_trigger_scores_partitions_on_the_gpu_agent_and_a_late_file_runs_one_more(
    sluice_up, sluice_agent, tmp_path: Path
) -> None:
    example = Path(shutil.copytree(EXAMPLES / "batch-scoring", tmp_path / "batch-scoring"))
    landing = tmp_path / "landing"
    datastore = example / "datastore.yaml"
    datastore.write_text(datastore.read_text().replace("/tmp/sluice-examples/landing", str(landing)))
    # The trigger passes the fire's date in its time zone: the sample data is there for any day near now.
    today = datetime.now(UTC).astimezone(ZoneInfo("Europe/Madrid")).date()
    for day in (today - timedelta(days=1), today, today + timedelta(days=1)):
        (landing / "customers" / day.isoformat()).mkdir(parents=True)
        for sample in (example / "sample").glob("*.csv"):  # three files: two partitions of up to two
            shutil.copy(sample, landing / "customers" / day.isoformat())
    trigger = example / "trigger.yaml"
    nightly = trigger.read_text()
    assert 'cron: "0 2 * * *"' in nightly
    assert "catchup: latest" in nightly
    trigger.write_text(
        nightly.replace('"0 2 * * *"', '"* * * * * *"').replace("catchup: latest", "catchup: none")
    )
    sluice = sluice_up()  # its local agent has no labels and (on CI) no GPU: prep's agent
    env = sluice.client_env
    sluice_agent(
        sluice, "gpu-1", "--labels", "accelerator=gpu", "--gpus", "1", "--cpus", "1", "--memory", "2Gi"
    )
    applied = cli("apply", "-f", str(example), env=env)
    assert applied.returncode == 0, applied.stderr

    # The first fire: pause, let every run so far finish, then one more fire, made after they ended.
    wait_for(lambda: runs_of(env, "batch-scoring"), timeout=20, interval=0.1)
    assert cli("triggers", "pause", "nightly-scoring", env=env).returncode == 0
    earlier = wait_for(lambda: all_finished(env, "batch-scoring"), timeout=40, interval=0.2)
    assert cli("triggers", "resume", "nightly-scoring", env=env).returncode == 0
    wait_for(lambda: len(runs_of(env, "batch-scoring")) > len(earlier), timeout=20, interval=0.1)
    assert cli("triggers", "pause", "nightly-scoring", env=env).returncode == 0
    runs = wait_for(lambda: all_finished(env, "batch-scoring"), timeout=40, interval=0.2)

    assert [run["status"] for run in runs] == ["succeeded"] * len(runs)
    assert {run["trigger"] for run in runs} == {"nightly-scoring"}
    assert {run["params"]["date"] for run in runs} <= {
        (today + timedelta(days=d)).isoformat() for d in (-1, 0, 1)
    }
    first, second = show_run(runs[0]["id"], env), show_run(runs[-1]["id"], env)
    assert second["created_at"] > max(run["finished_at"] for run in earlier)
    assert first["event_id"] is not None
    assert first["resolution"] == "default"
    ran = steps_of(first)
    partitions = ("score[0]", "score[1]")
    assert sorted(name for name in ran if name.startswith("score[")) == list(partitions)
    for name in partitions:
        assert ran[name]["partition_of"] == "score"
        assert [attempt["agent"] for attempt in ran[name]["attempts"]] == ["gpu-1"]
    assert ran["score"]["status"] == "succeeded"
    assert ran["score"]["attempts"] == []  # the step runs as its partitions, never itself
    assert [attempt["agent"] for attempt in ran["report"]["attempts"]] == ["local"]
    assert (
        "scored 4 customers (customers-north.csv, customers-south.csv) with model prod on GPU 0"
        in cli("runs", "logs", first["id"], "score[0]", env=env).stdout
    )
    # report read score's output directory: both partitions' parts.
    assert "reported 5 customers from 2 parts" in cli("runs", "logs", first["id"], "report", env=env).stdout
    assert [(m["name"], m["value"]) for m in ran["report"]["metrics"]] == [("customers_scored", 5)]
    shown = cli("runs", "show", second["id"], env=env)  # the text view of the same, for people
    print(shown.stdout)
    assert shown.returncode == 0, shown.stderr
    assert "nightly-scoring" in shown.stdout

    # From here on: output reuse.
    assert ran["score[0]"]["reuse"]["outcome"] == "executed"
    # Nothing changed since: same source, params and landing files, so every partition (and report
    # after them) is reused.
    again = steps_of(second)
    earlier_ids = {run["id"] for run in runs[:-1]}
    for name in (*partitions, "report"):
        assert again[name]["status"] == "reused", again[name]
        assert again[name]["reused"] is True
        assert again[name]["attempts"] == []
        assert again[name]["fingerprint"] == ran[name]["fingerprint"]
        assert again[name]["reuse"]["outcome"] == "reused"
        assert again[name]["reuse"]["reused_from"]["run_id"] in earlier_ids
        assert again[name]["reuse"]["reused_from"]["step"] == name
    assert again["score"]["status"] == "succeeded"
    assert "reused" in shown.stdout

    # --no-reuse executes every step again, each on its agent.
    date = second["params"]["date"]
    forced = cli("run", "batch-scoring", "-p", f"date={date}", "--no-reuse", "--wait", env=env)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    rerun = steps_of(show_run(forced.stdout.splitlines()[0].strip(), env))
    for name, agent in (("score[0]", "gpu-1"), ("score[1]", "gpu-1"), ("report", "local")):
        assert rerun[name]["status"] == "succeeded"
        assert rerun[name]["reused"] is False
        assert rerun[name]["reuse"]["outcome"] == "off"
        assert [attempt["agent"] for attempt in rerun[name]["attempts"]] == [agent]

    # A file arrives late: it goes to a new partition, the only one that runs; the others keep their
    # files, so their fingerprints, and are reused (sticky partitions).
    shutil.copy(example / "sample" / "later" / "customers-east.csv", landing / "customers" / date)
    late = cli("run", "batch-scoring", "-p", f"date={date}", "--wait", env=env)
    assert late.returncode == 0, late.stdout + late.stderr
    incremental = show_run(late.stdout.splitlines()[0].strip(), env)
    grown = steps_of(incremental)
    assert sorted(name for name in grown if name.startswith("score[")) == [*partitions, "score[2]"]
    for name in partitions:
        assert grown[name]["status"] == "reused", grown[name]
        assert grown[name]["attempts"] == []
        assert grown[name]["fingerprint"] == rerun[name]["fingerprint"]
    assert grown["score[2]"]["status"] == "succeeded"
    assert grown["score[2]"]["reuse"]["outcome"] == "executed"
    assert [attempt["agent"] for attempt in grown["score[2]"]["attempts"]] == ["gpu-1"]
    assert "scored 1 customers (customers-east.csv)" in (
        cli("runs", "logs", incremental["id"], "score[2]", env=env).stdout
    )
    assert (grown["score"]["status"], grown["report"]["status"]) == ("succeeded", "succeeded")
    shown = cli("runs", "show", incremental["id"], env=env)
    print(shown.stdout)
    assert "score[0]" in shown.stdout
    assert "reused" in shown.stdout
    report = cli("runs", "logs", incremental["id"], "report", env=env).stdout
    assert f"reported 6 customers from 3 parts for {date}" in report


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
        nc = await nats.connect(sluice.nats_url, user_credentials=sluice.service_creds)
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


def test_the_message_bus_service_starts_two_runs_and_reports_both_outcomes(sluice_up) -> None:
    sluice = sluice_up()
    env = sluice.client_env
    assert cli("apply", "-f", str(EXAMPLES / "message-bus"), env=env).returncode == 0

    service = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "message-bus" / "service.py"),
            "--nats-url",
            sluice.nats_url,
            "--creds",
            sluice.service_creds,
            "--customer",
            "c-077",
            "--timeout",
            "45",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert service.returncode == 0, service.stdout + service.stderr
    print(service.stdout)
    runs = cli_json("runs", "--pipeline", "score-customer", env=env)["items"]
    assert sorted((run["trigger"] or "submit", run["status"]) for run in runs) == [
        ("scoring-requests", "succeeded"),
        ("submit", "succeeded"),
    ]
    assert {run["params"]["customer"] for run in runs} == {"c-077"}
    for run in runs:
        assert f"run {run['id']}: succeeded" in service.stdout
