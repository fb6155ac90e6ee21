"""The batch-scoring example end to end with its ``landing`` and ``default`` datastores in S3
(moto_server): a daemon and two agents that share no directory (each agent stages and caches in its
own cache dir), the day's files downloaded by the agents, outputs and logs published in the bucket,
an unchanged run reused, and a rewritten object that re-runs its partition and what reads it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import obstore
import pytest

from kit.objectstore import open_store, published
from tests.e2e.sluice import FAST_TIMINGS, cli, show_run, steps_of
from tests.s3 import S3Endpoint

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).parents[2] / "examples" / "batch-scoring"
DATE = "2026-11-23"


def run(env: dict[str, str], *extra: str) -> dict:
    """`sluice run batch-scoring -p date=DATE --wait`; the finished run."""
    done = cli("run", "batch-scoring", "-p", f"date={DATE}", "--wait", *extra, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return show_run(done.stdout.splitlines()[0].strip(), env)


def test_batch_scoring_with_landing_and_default_in_s3_on_agents_that_share_no_directory(
    sluice_up, sluice_agent, base_env: dict[str, str], s3: S3Endpoint, tmp_path: Path
) -> None:
    landing_bucket, lake_bucket = s3.make_bucket("e2e-landing"), s3.make_bucket("e2e-lake")
    landing = open_store(s3.location(landing_bucket, "incoming"), s3.env())
    lake = open_store(s3.location(lake_bucket), s3.env())
    samples = sorted((EXAMPLE / "sample").glob("*.csv"))  # three files: two partitions of up to two
    for sample in samples:
        obstore.put(landing, f"customers/{DATE}/{sample.name}", sample.read_bytes())
    example = Path(shutil.copytree(EXAMPLE, tmp_path / "batch-scoring"))
    (example / "trigger.yaml").unlink()  # runs by hand here
    (example / "datastore.yaml").write_text(
        s3.datastore_document("landing", landing_bucket, "incoming")
        + "---\n"
        + s3.datastore_document("default", lake_bucket)
    )
    daemon = sluice_up("--agents", "0", env=base_env | s3.env() | FAST_TIMINGS)
    env = daemon.client_env
    gpu = sluice_agent(daemon, "gpu-1", "--labels", "accelerator=gpu", "--gpus", "1", "--cpus", "1")
    cpu = sluice_agent(daemon, "cpu-1", "--gpus", "0", "--cpus", "1")
    # Nothing shared: each agent has a cache dir of its own, apart from the daemon's data dir.
    for agent in (gpu, cpu):
        assert not agent.cache_dir.is_relative_to(daemon.data_dir)
        assert not daemon.data_dir.is_relative_to(agent.cache_dir)
    applied = cli("apply", "-f", str(example), env=env)
    assert applied.returncode == 0, applied.stderr

    first = run(env)

    assert first["status"] == "succeeded", first
    ran = steps_of(first)
    assert [attempt["agent"] for attempt in ran["report"]["attempts"]] == ["cpu-1"]
    for name in ("score[0]", "score[1]"):
        assert [attempt["agent"] for attempt in ran[name]["attempts"]] == ["gpu-1"]
    report = asyncio.run(published(lake, f"runs/{first['id']}/report/report"))
    assert report is not None
    assert sorted(report) == ["report.json"]
    # Logs come from the bucket: the agents uploaded them, with their transfers' progress lines.
    score_log = cli("runs", "logs", first["id"], "score[0]", env=env).stdout
    assert f"downloading input raw from s3://{landing_bucket}/incoming/customers/{DATE}: 3 files" in score_log
    assert "scored 4 customers (customers-north.csv, customers-south.csv) with model prod" in score_log
    report_log = cli("runs", "logs", first["id"], "report", env=env).stdout
    assert f"reported 5 customers from 2 parts for {DATE}" in report_log
    assert "uploaded output report: 1 file" in report_log
    # Nothing of a step run stays staged on its agent once it is over.
    for agent in (gpu, cpu):
        assert list((agent.cache_dir / "staging").rglob("*.csv")) == []

    unchanged = steps_of(run(env))

    assert {name: unchanged[name]["status"] for name in ("score[0]", "score[1]", "report")} == dict.fromkeys(
        ("score[0]", "score[1]", "report"), "reused"
    )

    # One object rewritten: its listing (its ETag) changes, so its partition and report run again.
    north = f"customers/{DATE}/customers-north.csv"
    obstore.put(landing, north, (EXAMPLE / "sample" / "customers-north.csv").read_bytes() + b"n9,999\n")
    changed = run(env)

    again = steps_of(changed)
    assert again["score[0]"]["status"] == "succeeded"  # north's partition
    assert again["score[0]"]["fingerprint"] != ran["score[0]"]["fingerprint"]
    assert again["score[1]"]["status"] == "reused"
    assert again["report"]["status"] == "succeeded"
    assert "reported 6 customers from 2 parts" in cli("runs", "logs", changed["id"], "report", env=env).stdout
    # score[1]'s inputs were on gpu-1 already: its cache served every file but north's.
    cached = cli("runs", "logs", changed["id"], "score[0]", env=env).stdout
    assert "2 from the agent's cache" in cached
    # The credentials the agents read from their environment are in no log of theirs or of a step.
    logs = [agent.log_path.read_text() for agent in (gpu, cpu)] + [score_log, report_log, cached]
    assert all(s3.secret_access_key not in text for text in logs)
