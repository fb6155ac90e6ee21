"""Reuse planning benchmark: planning a run of a 1,000-step pipeline (fingerprints of every step, the
data fingerprints of its datastore inputs, the reuse lookups) and creating it.

Everything runs in this process against embedded PostgreSQL and NATS: the scheduler and the HTTP API
as the daemon runs them, and fake agents (``tests/integration/fake_agent.py``) that create their
outputs and finish at once. The pipeline is ``--steps`` steps in layers of 10: each step reads an
output of one step of the layer before, the first layer reads a datastore directory of ``--files``
files. Timed, ``--repeat`` times each:

1. plan, all misses: ``ReusePlanner.plan`` for params never run before (cold lookups);
2. plan, all hits: the same after a run with those params succeeded (every step reused);
3. create, all hits: ``POST /pipelines/{name}/runs`` end to end — plan, insert of every step run
   (reused) in one statement, response.

Run: .venv/bin/python tests/bench/bench_reuse.py [--steps 1000] [--files 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

from kit.logsetup import configure_logging
from tests.bench.bench_dispatch import System
from tests.bench.harness import embedded_servers, report, temp_dir
from tests.integration.fake_agent import Outcome

LAYER = 10
COMMAND = '    command: [work, "${params.day}", "${outputs.out}"]'


def pipeline(steps: int) -> str:
    lines = ["kind: Pipeline", "name: wide", "params:", "  day: {type: string}", "steps:"]
    for index in range(steps):
        lines += [f"  - name: s{index}", COMMAND]
        lines.append("    outputs: [out]")
        if index < LAYER:
            lines.append('    inputs: {raw: {datastore: landing, path: "days"}}')
        else:
            lines += ["    inputs:", f"      up: ${{steps.s{index - LAYER}.outputs.out}}"]
    return "\n".join(lines) + "\n"


def creates_outputs(assignment) -> Outcome:
    for path in assignment.outputs.values():
        os.makedirs(path, exist_ok=True)
    return Outcome()


async def create(system: System, day: str) -> tuple[str, float]:
    started = time.perf_counter()
    body = {"params": {"day": day}}
    async with system.session.post(f"{system.api}/pipelines/wide/runs", json=body) as answer:
        payload = await answer.json()
        assert answer.status == 201, payload
    return payload["run_id"], (time.perf_counter() - started) * 1000


async def wait_finished(system: System, run_id: str) -> str:
    while True:
        status = await system.pool.fetchval("SELECT status FROM runs WHERE id = $1", uuid.UUID(run_id))
        if status in ("succeeded", "failed", "cancelled"):
            return status
        await asyncio.sleep(0.05)


async def plan_ms(system: System, day: str) -> tuple[float, int]:
    scheduler = system.scheduler
    version = await scheduler.specs.load(system.pool, "wide", 1)
    async with system.pool.acquire() as conn:
        started = time.perf_counter()
        decisions = await scheduler.reuse.plan(conn, version, {"day": day}, run_id=uuid.uuid4(), reuse=True)
        elapsed = (time.perf_counter() - started) * 1000
    return elapsed, sum(1 for decision in decisions.values() if decision.origin is not None)


def summary(samples: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(samples), 1), "min_ms": round(min(samples), 1),
            "max_ms": round(max(samples), 1)}  # fmt: skip


async def main(args: argparse.Namespace) -> dict:
    root = temp_dir()
    landing = root / "landing" / "days"
    landing.mkdir(parents=True)
    for index in range(args.files):
        (landing / f"f{index}.csv").write_text("id\n1\n")
    async with embedded_servers(root) as (pg, nats), System(pg, nats, root, "reuse") as system:
        await system.apply(f"kind: Datastore\nname: landing\ntype: local\npath: {landing.parent}\n")
        await system.apply(pipeline(args.steps))
        await system.agents(4, 512.0, creates_outputs)
        misses, hits, creates = [], [], []
        for repeat in range(args.repeat):
            day = f"d{repeat}"
            elapsed, reused = await plan_ms(system, day)
            assert reused == 0, reused
            misses.append(elapsed)
            run_id, _ = await create(system, day)
            assert await wait_finished(system, run_id) == "succeeded"
            elapsed, reused = await plan_ms(system, day)
            assert reused == args.steps, reused
            hits.append(elapsed)
            run_id, elapsed = await create(system, day)
            assert await wait_finished(system, run_id) == "succeeded"
            creates.append(elapsed)
    return {
        "steps": args.steps,
        "datastore_files": args.files,
        "plan_all_misses": summary(misses),
        "plan_all_reused": summary(hits),
        "create_run_all_reused": summary(creates),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    configure_logging("json", level=logging.WARNING)
    report("bench_reuse", asyncio.run(main(parser.parse_args())))
