"""Fan-out benchmark: a run whose step fans out over 10,000 files in 1,000 partitions on 8 agents.

Everything runs in this process against embedded PostgreSQL and NATS: the scheduler and the HTTP API
as the daemon runs them, and 8 fake agents (``tests/integration/fake_agent.py``) that create their
outputs and finish at once. A local datastore holds ``--files`` small CSV files; the pipeline has one
step that fans out over them, ``per`` files a partition, and one step below it that reads all its
partitions' outputs. Measured:

1. planning: ``ReusePlanner.plan_many`` for the run (``--repeat`` times, nothing written), then
   ``POST /pipelines/{name}/runs`` end to end (plan, insert of every partition, response);
2. partitions assigned per second: from the first partition accepted by an agent to the last;
3. peak RSS: the daemon runs in this process, so a task samples this process's RSS (every 10 ms,
   psutil) from before the run is created until it has finished; this counts the fake agents and the
   HTTP client beside the daemon, but not PostgreSQL and NATS, which are processes of their own;
4. a re-run after ``--added`` new files: planning again, and how many partitions executed (the new
   files land in one new partition; every other partition is reused).

Targets (issue 15): planning ≤ 500 ms, daemon peak RSS ≤ 200 MB.

Run: .venv/bin/python tests/bench/bench_fanout.py [--files 10000] [--per 10] [--agents 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import logging
import os
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

import psutil

from daemon.planning.reuse_planner import PlanRequest
from kit.logsetup import configure_logging
from tests.bench.bench_dispatch import System
from tests.bench.harness import embedded_servers, report, temp_dir
from tests.integration.fake_agent import FakeAgent, Outcome

MiB = 1024 * 1024
PLAN_TARGET_MS = 500
RSS_TARGET_MB = 200


def pipeline(per: int) -> str:
    return f"""
kind: Pipeline
name: fan
steps:
  - name: score
    command: [score, --out, "${{outputs.scores}}", "${{item.files}}"]
    inputs:
      raw: {{datastore: landing, path: day}}
    outputs: [scores]
    resources: {{cpu: 1, memory: 64Mi}}
    foreach: {{files: {{input: raw, pattern: "*.csv", per: {per}}}}}
  - name: report
    command: [report, "${{steps.score.outputs.scores}}"]
    resources: {{cpu: 1, memory: 64Mi}}
"""


def creates_outputs(assignment) -> Outcome:
    for path in assignment.outputs.values():
        os.makedirs(path, exist_ok=True)
    return Outcome()


def write_files(day: Path, numbers: range) -> None:
    for number in numbers:
        (day / f"part-{number:05d}.csv").write_text(f"id,score\n{number},1\n")


class PeakRss:
    """This process's RSS, sampled until stopped: the largest sample, and the first."""

    def __init__(self, interval: float = 0.01) -> None:
        self._process = psutil.Process()
        self._interval = interval
        self.first = self.peak = self._process.memory_info().rss

    async def sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
        self.peak = max(self.peak, self._process.memory_info().rss)


async def plan_ms(system: System, repeat: int) -> dict:
    """``plan_many`` for a run of the pipeline as it would be created now, ``repeat`` times."""
    scheduler = system.scheduler
    version = await scheduler.specs.load(system.pool, "fan", 1)
    samples, partitions, reused = [], 0, 0
    for _ in range(repeat):
        request = PlanRequest(version, {}, uuid.uuid4(), reuse=True)
        async with system.pool.acquire() as conn:
            started = time.perf_counter()
            [decisions] = await scheduler.reuse.plan_many(conn, [request])
            samples.append((time.perf_counter() - started) * 1000)
        partitions = sum(1 for decision in decisions.values() if decision.partition is not None)
        reused = sum(
            1 for decision in decisions.values() if decision.partition is not None and decision.origin
        )
    return {
        "p50_ms": round(statistics.median(samples), 1),
        "min_ms": round(min(samples), 1),
        "max_ms": round(max(samples), 1),
        "partitions": partitions,
        "partitions_reused": reused,
    }


async def wait_finished(system: System, run_id: str) -> str:
    async with asyncio.timeout(600):
        while True:
            status = await system.pool.fetchval("SELECT status FROM runs WHERE id = $1", uuid.UUID(run_id))
            if status in ("succeeded", "failed", "cancelled"):
                return status
            await asyncio.sleep(0.02)


async def one_run(system: System, agents: list[FakeAgent], repeat: int, profile: Path | None = None) -> dict:
    """Plan, create and finish a run; what it took, and what the agents were given. With ``profile``,
    the run's creation (request to response, all of this process) is profiled into that file."""
    planned = await plan_ms(system, repeat)
    for agent in agents:
        agent.assignments.clear()
        agent.accepted_at.clear()
    rss = PeakRss()
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        group.create_task(rss.sample(stop), name="bench-rss-sampler")
        try:
            profiler = cProfile.Profile() if profile else None
            with profiler or contextlib.nullcontext():
                started = time.perf_counter()
                async with system.session.post(f"{system.api}/pipelines/fan/runs", json={}) as answer:
                    payload = await answer.json()
                    assert answer.status == 201, payload
                created_ms = (time.perf_counter() - started) * 1000
            if profiler and profile:
                profiler.dump_stats(profile)
            status = await wait_finished(system, payload["run_id"])
            finished_s = time.perf_counter() - started
        finally:
            stop.set()
    assert status == "succeeded", status
    partitions = sorted(
        agent.accepted_at[assignment.attempt_id]
        for agent in agents
        for assignment in agent.assignments
        if assignment.step.startswith("score[")
    )
    window = partitions[-1] - partitions[0] if len(partitions) > 1 else 0.0
    return {
        "plan_many": planned,
        "create_run_ms": round(created_ms, 1),
        "partitions_executed": len(partitions),
        "partitions_assigned_per_s": round((len(partitions) - 1) / window, 1) if window > 0 else None,
        "assign_window_s": round(window, 3),
        "run_end_to_end_s": round(finished_s, 3),
        "assignments_per_agent": [len(agent.assignments) for agent in agents],
        "rss_mb_at_create": round(rss.first / MiB, 1),
        "rss_mb_peak": round(rss.peak / MiB, 1),
    }


async def main(args: argparse.Namespace) -> dict:
    root = temp_dir()
    day = root / "landing" / "day"
    day.mkdir(parents=True)
    write_files(day, range(args.files))
    async with embedded_servers(root) as (pg, nats), System(pg, nats, root, "fanout") as system:
        await system.apply(f"kind: Datastore\nname: landing\ntype: local\npath: {day.parent}\n")
        await system.apply(pipeline(args.per))
        agents = await system.agents(args.agents, args.agent_cpus, creates_outputs)
        first = await one_run(system, agents, args.repeat, args.profile)
        write_files(day, range(args.files, args.files + args.added))
        profile_rerun = args.profile and args.profile.with_suffix(".rerun")
        rerun = await one_run(system, agents, args.repeat, profile_rerun)
    peak = max(first["rss_mb_peak"], rerun["rss_mb_peak"])
    return {
        "files": args.files,
        "per": args.per,
        "agents": args.agents,
        "agent_cpus": args.agent_cpus,
        "first_run": first,
        f"rerun_after_{args.added}_new_files": rerun,
        "process_rss_mb_peak": peak,
        "process_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "targets": {
            "create_run_ms_le_500": max(first["create_run_ms"], rerun["create_run_ms"]) <= PLAN_TARGET_MS,
            "rss_mb_le_200": peak <= RSS_TARGET_MB,
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--per", type=int, default=10)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--agent-cpus", type=float, default=32.0)
    parser.add_argument("--added", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="cProfile each run's creation into this file")
    configure_logging("json", level=logging.WARNING)
    report("fanout", asyncio.run(main(parser.parse_args())))
