"""Fan-out end to end: a ``foreach`` step runs as partitions on real `sluice agent` processes.

Each partition is a real Python process started from the pipeline's source directory, its
parameters argv items. What partitions leave in their output directories (the files they scored,
their start and end times) and in a shared directory (markers, pids, completions) is the evidence
of what ran, where, how often and when.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.e2e.sluice import (
    SluiceAgent,
    SluiceUp,
    api_request,
    cli,
    get_run,
    pid_gone,
    steps_of,
    wait_for,
    wait_run,
)

pytestmark = pytest.mark.e2e

FINAL = ("succeeded", "failed", "cancelled")

BATCH = """
kind: Datastore
name: landing
type: local
path: {landing}
---
kind: Pipeline
name: batch
source: ./code
steps:
  - name: score
    command: [python3, score.py, "${{outputs.scores}}", "${{item.files}}"]
    inputs:
      raw: {{datastore: landing, path: day}}
    outputs: [scores]
    foreach: {{files: {{input: raw, pattern: "*.txt", per: 10}}}}
  - name: gather
    command: [python3, gather.py, "${{inputs.scores}}", "${{outputs.summary}}"]
    inputs: {{scores: "${{steps.score.outputs.scores}}"}}
    outputs: [summary]
"""

SCORE = """import pathlib, sys
out, files = pathlib.Path(sys.argv[1]), [pathlib.Path(name) for name in sys.argv[2:]]
(out / "scored.txt").write_text("".join(f"{f.name} {f.read_text().strip()}\\n" for f in files))
"""

GATHER = """import json, pathlib, sys
parts = sorted(pathlib.Path(sys.argv[1]).iterdir())
summary = {part.name: (part / "scored.txt").read_text().splitlines() for part in parts}
pathlib.Path(sys.argv[2], "summary.json").write_text(json.dumps(summary))
"""

SHARDS = """
kind: Pipeline
name: {name}
source: ./code
params:
  dir: {{type: string}}
{extra}
steps:
  - name: work
    command: [python3, {script}, "${{item}}", "${{outputs.times}}", "${{params.dir}}"]
    outputs: [times]
    foreach: {foreach}
  - name: after
    command: [python3, -c, "import sys; print('after', sys.argv[1])", "${{params.dir}}"]
    after: [work]
"""

FAILS_ON_TWO = """import sys
sys.exit(1 if sys.argv[1] == "2" else 0)
"""

TIMED = """import pathlib, sys, time
started = time.time()
time.sleep(0.4)
pathlib.Path(sys.argv[2], "times.txt").write_text(f"{started} {time.time()}\\n")
"""

GATED = """import os, pathlib, sys, time
index, shared = sys.argv[1], pathlib.Path(sys.argv[3])
(shared / f"pid-{index}-{os.environ['SLUICE_ATTEMPT']}").write_text(str(os.getpid()))
deadline = time.monotonic() + 60
while not (shared / "gate").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
with (shared / "completions").open("a") as completions:
    completions.write(index + "\\n")
"""


def publish(env: dict[str, str], tmp_path: Path, documents: str, scripts: dict[str, str]) -> None:
    """Write ``scripts`` (file name -> text) into the pipelines' source directory ``code`` and
    apply ``documents`` from a file beside it."""
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (code / name).write_text(text)
    (tmp_path / "pipelines.yaml").write_text(documents)
    applied = cli("apply", "-f", str(tmp_path / "pipelines.yaml"), env=env)
    assert applied.returncode == 0, applied.stderr


def agents(daemon: SluiceUp, start, names: tuple[str, ...], cpus: int) -> dict[str, SluiceAgent]:
    """Agents ``names`` of ``cpus`` cores each, started together and listed."""
    started = {
        name: start(daemon, name, "--cpus", str(cpus), "--memory", "1Gi", "--gpus", "0", wait=False)
        for name in names
    }
    for agent in started.values():
        agent.wait_listed(daemon.client_env)
    return started


def post_run(pipeline: str, env: dict[str, str], **params: str) -> str:
    """Start a run of ``pipeline`` through the API (a `sluice run` costs a second of interpreter
    start); returns its id."""
    request = api_request(
        f"/pipelines/{pipeline}/runs",
        env,
        data=json.dumps({"params": params}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["run_id"]


def partitions(run: dict, step: str) -> list[dict]:
    """The step runs of ``step``'s partitions, by index."""
    found = [entry for entry in run["steps"] if entry.get("partition_of") == step]
    return sorted(found, key=lambda entry: entry["partition"])


def output_dir(daemon: SluiceUp, run_id: str, step: str, output: str) -> Path:
    return daemon.data_dir / "datastores" / "default" / "runs" / run_id / step / output


def gathered(daemon: SluiceUp, run_id: str) -> dict[str, list[str]]:
    """What ``gather`` found in its input: partition directory -> the lines its partition scored."""
    return json.loads((output_dir(daemon, run_id, "gather", "summary") / "summary.json").read_text())


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_files_fan_out_over_agents_and_new_files_run_only_a_new_partition(
    sluice_daemon: SluiceUp, sluice_agent, tmp_path: Path
) -> None:
    env = sluice_daemon.client_env
    day = tmp_path / "landing" / "day"
    day.mkdir(parents=True)
    for number in range(100):
        (day / f"row-{number:03d}.txt").write_text(f"{number * number}\n")
    (day / "readme.md").write_text("not a row")
    publish(
        env, tmp_path, BATCH.format(landing=tmp_path / "landing"), {"score.py": SCORE, "gather.py": GATHER}
    )
    agents(sluice_daemon, sluice_agent, ("east", "west", "north"), cpus=2)

    first_id = post_run("batch", env)
    first = wait_run(first_id, env, FINAL, timeout=60)

    assert first["status"] == "succeeded"
    parts = partitions(first, "score")
    assert [part["name"] for part in parts] == [f"score[{index}]" for index in range(10)]
    assert {part["status"] for part in parts} == {"succeeded"}
    assert len({part["attempts"][0]["agent"] for part in parts}) > 1  # spread, not queued on one
    summary = json.loads(
        (output_dir(sluice_daemon, first_id, "gather", "summary") / "summary.json").read_text()
    )
    assert list(summary) == [f"part-{index:05d}" for index in range(10)]
    for index, scored in enumerate(summary.values()):
        numbers = range(index * 10, index * 10 + 10)
        assert scored == [f"row-{number:03d}.txt {number * number}" for number in numbers]

    for number in range(100, 105):
        (day / f"row-{number:03d}.txt").write_text(f"{number * number}\n")
    second_id = post_run("batch", env)
    second = wait_run(second_id, env, FINAL, timeout=60)

    assert second["status"] == "succeeded"
    parts = partitions(second, "score")
    assert [part["status"] for part in parts] == ["reused"] * 10 + ["succeeded"]
    assert [part["item"] for part in parts[10:]] == [{"files": [f"row-{n}.txt" for n in range(100, 105)]}]
    for part in parts[:10]:
        assert not part["attempts"]
        assert part["reuse"]["outcome"] == "reused"
        origin = part["reuse"]["reused_from"]
        assert (origin["run_id"], origin["step"]) == (first_id, part["name"])
    assert parts[10]["reuse"]["outcome"] != "reused"
    shown = cli("runs", "show", second_id, env=env)
    assert shown.returncode == 0, shown.stderr
    for index in range(10):  # the REUSE table: step, outcome, why
        assert re.search(rf"^score\[{index}\] +reused +nothing changed: ", shown.stdout, re.M), shown.stdout
    assert re.search(r"^score\[10\] +executed +first run of this step", shown.stdout, re.M), shown.stdout
    assert steps_of(second)["gather"]["status"] == "succeeded"  # its input changed: a partition more
    summary = json.loads(
        (output_dir(sluice_daemon, second_id, "gather", "summary") / "summary.json").read_text()
    )
    assert list(summary) == [f"part-{index:05d}" for index in range(11)]  # reused parts are linked in
    assert summary["part-00010"] == [f"row-{n}.txt {n * n}" for n in range(100, 105)]


def shards_pipeline(name: str, script: str, foreach: str, extra: str = "") -> str:
    """A pipeline ``name`` whose step ``work`` runs ``script`` over ``foreach``, then ``after``;
    ``extra``: more of the pipeline's top-level fields."""
    return SHARDS.format(name=name, script=script, foreach=foreach, extra=extra)


def test_allowed_failures_tolerate_a_failed_partition_and_no_more(
    sluice_daemon: SluiceUp, sluice_agent, tmp_path: Path
) -> None:
    env = sluice_daemon.client_env
    documents = "---".join(
        shards_pipeline(name, "fails_on_two.py", f"{{shards: 4, allowed_failures: {allowed}}}")
        for name, allowed in (("tolerant", 1), ("strict", 0))
    )
    publish(env, tmp_path, documents, {"fails_on_two.py": FAILS_ON_TWO})
    agents(sluice_daemon, sluice_agent, ("only",), cpus=2)

    # Apart (their params differ), lest the strict run reuse what the tolerant one made.
    tolerant_id = post_run("tolerant", env, dir=str(tmp_path / "tolerant"))
    strict_id = post_run("strict", env, dir=str(tmp_path / "strict"))
    tolerant = wait_run(tolerant_id, env, FINAL, timeout=30)
    strict = wait_run(strict_id, env, FINAL, timeout=30)

    for run in (tolerant, strict):
        assert [part["status"] for part in partitions(run, "work")] == ["succeeded"] * 2 + [
            "failed",
            "succeeded",
        ]
        assert [a["exit_code"] for a in steps_of(run)["work[2]"]["attempts"]] == [1]
    assert (strict["status"], steps_of(strict)["work"]["status"]) == ("failed", "failed")
    assert steps_of(strict)["after"]["status"] == "skipped"
    assert (tolerant["status"], steps_of(tolerant)["work"]["status"]) == ("succeeded", "succeeded")
    assert steps_of(tolerant)["after"]["status"] == "succeeded"
    shown = cli("runs", "show", tolerant_id, env=env)
    assert shown.returncode == 0, shown.stderr
    # Succeeded, but not quietly: the step's warning names the partition that failed.
    assert "1 of 4 partitions failed (allowed_failures 1): work[2]" in shown.stdout, shown.stdout


def overlaps(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that hold one moment in common."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:  # an end sorts before a start at the same moment
        running += change
        most = max(most, running)
    return most


def test_max_parallel_bounds_the_partitions_running_at_once(
    sluice_daemon: SluiceUp, sluice_agent, tmp_path: Path
) -> None:
    env = sluice_daemon.client_env
    publish(
        env,
        tmp_path,
        shards_pipeline("bounded", "timed.py", "{shards: 6, max_parallel: 2}"),
        {"timed.py": TIMED},
    )
    agents(sluice_daemon, sluice_agent, ("wide",), cpus=6)

    run_id = post_run("bounded", env, dir=str(tmp_path))
    run = wait_run(run_id, env, FINAL, timeout=30)

    assert run["status"] == "succeeded"
    intervals = []
    for index in range(6):
        times = output_dir(sluice_daemon, run_id, "work", "times") / f"part-{index:05d}" / "times.txt"
        started, ended = times.read_text().split()
        intervals.append((float(started), float(ended)))
    assert overlaps(intervals) == 2, intervals  # bounded, yet in parallel


def kill_steps_of(agent: SluiceAgent) -> None:
    """Kill what ``agent`` left running (a step outlives an agent killed with -9), as if its
    machine died with it."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if Path(process.cwd()).is_relative_to(agent.cache_dir):
                process.kill()


def test_a_killed_agent_s_partitions_and_only_those_run_again(
    sluice_daemon: SluiceUp, sluice_agent, tmp_path: Path
) -> None:
    env = sluice_daemon.client_env
    shared = tmp_path / "shared"
    shared.mkdir()
    publish(env, tmp_path, shards_pipeline("gated", "gated.py", "{shards: 4}"), {"gated.py": GATED})
    on = agents(sluice_daemon, sluice_agent, ("east", "west"), cpus=2)  # two partitions each

    run_id = post_run("gated", env, dir=str(shared))
    wait_for(lambda: len(list(shared.glob("pid-*-1"))) == 4, timeout=20)
    run = get_run(run_id, env)
    placed = {part["name"]: part["attempts"][0]["agent"] for part in partitions(run, "work")}
    assert sorted(placed.values()) == ["east", "east", "west", "west"]
    on["east"].kill()
    kill_steps_of(on["east"])
    (shared / "gate").touch()

    run = wait_run(run_id, env, FINAL, timeout=30)
    assert run["status"] == "succeeded"
    for part in partitions(run, "work"):
        attempts = [(a["status"], a["agent"]) for a in part["attempts"]]
        if placed[part["name"]] == "east":
            assert attempts == [("lost", "east"), ("succeeded", "west")], part["name"]
        else:
            assert attempts == [("succeeded", "west")], part["name"]
    assert sorted(lines(shared / "completions")) == ["0", "1", "2", "3"]  # each partition once


def test_cancel_stops_every_partition_and_the_run_held_behind_it_fans_out(
    sluice_daemon: SluiceUp, sluice_agent, tmp_path: Path
) -> None:
    env = sluice_daemon.client_env
    shared, behind = tmp_path / "shared", tmp_path / "behind"
    shared.mkdir()
    behind.mkdir()
    (behind / "gate").touch()
    one_at_a_time = "concurrency: {max_active_runs: 1, on_limit: queue}"
    documents = shards_pipeline("gated", "gated.py", "{shards: 4}", one_at_a_time)
    publish(env, tmp_path, documents, {"gated.py": GATED})
    agents(sluice_daemon, sluice_agent, ("only",), cpus=2)  # two partitions run, two wait

    run_id = post_run("gated", env, dir=str(shared))
    wait_for(lambda: len(list(shared.glob("pid-*-1"))) == 2, timeout=20)
    held_id = post_run("gated", env, dir=str(behind))
    waiting = get_run(held_id, env)
    assert (waiting["status"], waiting["held"]) == ("queued", True)
    assert partitions(waiting, "work") == []  # a held run's partitions are made when it is admitted
    pids = [int(path.read_text()) for path in shared.glob("pid-*")]
    cancelled = cli("runs", "cancel", run_id, env=env)
    assert cancelled.returncode == 0, cancelled.stderr

    run = wait_run(run_id, env, FINAL, timeout=20)
    assert run["status"] == "cancelled"
    assert [part["status"] for part in partitions(run, "work")] == ["cancelled"] * 4
    assert steps_of(run)["work"]["status"] == "cancelled"
    assert steps_of(run)["after"]["status"] == "cancelled"
    wait_for(lambda: all(pid_gone(pid) for pid in pids), timeout=10)
    assert len(list(shared.glob("pid-*"))) == 2  # the waiting partitions never started
    assert not lines(shared / "completions")

    held = wait_run(held_id, env, FINAL, timeout=20)  # admitted once the cancelled run let go
    assert held["status"] == "succeeded"
    assert [part["status"] for part in partitions(held, "work")] == ["succeeded"] * 4
    assert sorted(lines(behind / "completions")) == ["0", "1", "2", "3"]
