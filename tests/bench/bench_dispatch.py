"""Dispatch benchmarks: run request → first attempt accepted, and dispatch throughput.

Everything runs in this process against embedded PostgreSQL and NATS: the scheduler and HTTP API as
the daemon runs them, and 4 fake agents (real NATS peers, ``tests/integration/fake_agent.py``) that
accept at once and finish at once.

1. latency: 1,000 runs, one after the other, of a one-step pipeline; from sending
   ``POST /pipelines/{name}/runs`` to the agent having accepted the first step's assignment. Twice:
   agents that hold their attempts (an idle system), and agents that finish at once (each request
   overlaps the previous run's completion).
2. throughput: 2,000 one-step runs created while no agent is connected (all steps ready), then 4
   agents join (128 CPUs each by default: 512 slots, so capacity turns over): steps assigned per
   second (first acceptance to the 2,000th) and runs completed per second end to end (agents finish
   at once; a run counts when its `succeeded` commit is announced).

Run: .venv/bin/python tests/bench/bench_dispatch.py [--runs 1000] [--ready 2000] [--agent-cpus 512]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

import aiohttp
import asyncpg
import nats.js.errors
from aiohttp import web

from daemon import store
from daemon.api import make_app
from daemon.config import DispatchSettings
from daemon.runtime import bus
from daemon.runtime.embedded import EmbeddedPostgres, free_port
from daemon.runtime.scheduler import Scheduler
from kit import nats as kit_nats
from kit.logsetup import configure_logging
from kit.subjects import STEPS_STREAM
from runners.protocol import agent_inbox
from tests.bench.harness import Bus, embedded_servers, report, temp_dir
from tests.integration.fake_agent import ACCESS, AS_ADMIN, FakeAgent, GiB, Outcome

PIPELINE = """
kind: Pipeline
name: bench
params:
  n: {type: integer, default: 0}
steps:
  - name: only
    command: ["true", "${params.n}"]
    resources: {cpu: 1, memory: 64Mi}
"""


WARM_UP = 50


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class System:
    """One phase's daemon: a fresh database on the shared server, the scheduler, the API and agents."""

    def __init__(self, postgres: EmbeddedPostgres, nats: Bus, root: Path, name: str) -> None:
        self.postgres, self.nats, self.root, self.name = postgres, nats, root, name
        self.stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> System:
        stack = self.stack
        admin = await asyncpg.connect(self.postgres.dsn("postgres"))
        await admin.execute(f"CREATE DATABASE {self.name}")
        await admin.close()
        self.pool = await store.create_pool(self.postgres.dsn(self.name), max_size=20)
        stack.push_async_callback(self.pool.close)
        default = self.root / self.name / "default"
        default.mkdir(parents=True)
        async with self.pool.acquire() as conn:
            await store.migrate(conn)
            await store.upsert_datastore(conn, "default", "local", {"path": str(default)})
        self.nc = await bus.connect(self.nats.daemon())
        stack.push_async_callback(self.nc.drain)
        self.admin = await kit_nats.connect(self.nats.admin(), name="bench")
        stack.push_async_callback(self.admin.drain)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.admin.jetstream().delete_stream(STEPS_STREAM)
        self.scheduler = await Scheduler.start(stack, pool=self.pool, nc=self.nc, settings=DispatchSettings())
        sources = await bus.SourceStore.open(self.nc)
        app = make_app(pool=self.pool, nc=self.nc, sources=sources, access=ACCESS, scheduler=self.scheduler)
        runner = web.AppRunner(app)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.api = f"http://127.0.0.1:{port}/api/v1"
        self.session = await stack.enter_async_context(aiohttp.ClientSession(headers=AS_ADMIN))
        await self.apply(PIPELINE)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stack.aclose()

    async def agents(self, count: int, cpus: float, behaviour, prefix: str | None = None) -> list[FakeAgent]:
        agents = []
        for index in range(count):
            name = f"{prefix or self.name}-{index}"
            agent_nc = await kit_nats.connect(
                self.nats.agent(name), name=name, inbox_prefix=agent_inbox(name)
            )
            self.stack.push_async_callback(agent_nc.drain)
            agent = FakeAgent(
                agent_nc,
                name,
                cpu=cpus,
                memory=1024 * GiB,
                behaviour=behaviour,
                interval=1.0,
            )
            await agent.start()
            self.stack.push_async_callback(agent.stop)
            agents.append(agent)
        registry = self.scheduler.registry
        while not all((a := registry.agents.get(agent.id)) and a.accepts_work for agent in agents):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return agents

    async def apply(self, text: str) -> None:
        documents = {"documents": [{"file": "bench.yaml", "text": text}]}
        async with self.session.post(f"{self.api}/apply", json=documents) as response:
            assert response.status == 200, await response.text()

    async def start_run(self, index: int) -> str:
        body = {"params": {"n": index}}
        async with self.session.post(f"{self.api}/pipelines/bench/runs", json=body) as response:
            payload = await response.json()
            assert response.status == 201, payload
            return payload["run_id"]


async def latency(system: System, runs: int, *, finish: bool) -> dict:
    """Runs one after the other; agents hold each attempt (idle system) or finish it at once (each
    request then overlaps the completion of the run before)."""
    accepted: dict[str, asyncio.Future] = {}
    loop = asyncio.get_running_loop()

    def behaviour(assignment):
        future = accepted.setdefault(assignment.run_id, loop.create_future())
        if not future.done():
            future.set_result(time.perf_counter())
        return Outcome(hold=not finish)

    await system.agents(4, 512.0, behaviour)
    samples = []
    for index in range(runs + WARM_UP):
        started = time.perf_counter()
        run_id = await system.start_run(index)
        at = await asyncio.wait_for(accepted.setdefault(run_id, loop.create_future()), 10)
        if index >= WARM_UP:
            samples.append((at - started) * 1000)
    return {
        "n": len(samples),
        "p50": round(statistics.median(samples), 2),
        "p99": round(percentile(samples, 0.99), 2),
        "max": round(max(samples), 2),
        "mean": round(statistics.fmean(samples), 2),
    }


async def throughput(system: System, ready: int, cpus: float) -> dict:
    """``ready`` runs created with no agent connected, then 4 agents that finish at once join."""
    semaphore = asyncio.Semaphore(32)

    async def create(index: int) -> str:
        async with semaphore:
            return await system.start_run(index)

    created_started = time.perf_counter()
    run_ids = set(await asyncio.gather(*(create(index) for index in range(ready))))
    created_s = time.perf_counter() - created_started
    finished: set[str] = set()
    done = asyncio.Event()
    listener = system.scheduler.announcer.listen()

    async def follow() -> None:
        while len(finished) < len(run_ids):
            change = await listener.queue.get()
            if change.kind == "run" and change.data["status"] == "succeeded" and change.run_id in run_ids:
                finished.add(change.run_id)
        done.set()

    async with asyncio.TaskGroup() as group:
        group.create_task(follow())
        joined = time.perf_counter()
        agents = await system.agents(4, cpus, lambda assignment: Outcome())
        await asyncio.wait_for(done.wait(), 300)
    completed = time.perf_counter()
    accepted = sorted(at for agent in agents for at in agent.accepted_at.values())
    window = accepted[-1] - accepted[0]
    # The first wave fits the agents' free capacity at once: dispatch alone, before any turnover.
    wave = min(len(accepted), int(4 * cpus)) - 1
    wave_s = accepted[wave] - accepted[0]
    return {
        "ready_runs": ready,
        "agents": 4,
        "agent_cpus": cpus,
        "runs_created_per_s_over_http": round(ready / created_s, 1),
        "steps_assigned_per_s": round(len(accepted) / window, 1),
        "assign_window_s": round(window, 3),
        "first_wave_steps": wave + 1,
        "first_wave_assigned_per_s": round(wave / wave_s, 1) if wave_s > 0 else None,
        "runs_completed_per_s": round(ready / (completed - joined), 1),
        "end_to_end_s": round(completed - joined, 3),
        "assignments_per_agent": [len(agent.assignments) for agent in agents],
    }


async def main(args: argparse.Namespace) -> dict:
    root = temp_dir()
    async with embedded_servers(root) as (postgres, nats):
        results: dict = {}
        async with System(postgres, nats, root, "latency_idle") as system:
            results["latency_ms_idle"] = await latency(system, args.runs, finish=False)
        async with System(postgres, nats, root, "latency_busy") as system:
            results["latency_ms_busy"] = await latency(system, args.runs, finish=True)
        async with System(postgres, nats, root, "throughput") as system:
            results["throughput"] = await throughput(system, args.ready, args.agent_cpus)
        return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--ready", type=int, default=2000)
    parser.add_argument("--agent-cpus", type=float, default=128.0)
    configure_logging("json", level=logging.WARNING)
    report("dispatch", asyncio.run(main(parser.parse_args())))
