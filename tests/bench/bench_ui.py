"""Web UI benchmark (issue 16): server time of the run list and the run page over a full database,
and the daemon's memory.

A real `sluice up --agents 0` on a scratch data dir. Through the API: a 200-step pipeline (layers of
10: chains, a fan-in of 5 per layer, some ``after:``), ``--small-pipelines`` pipelines of 2 to 6 steps
and a ``nats`` trigger. Then ``--runs`` runs are seeded straight into the daemon's PostgreSQL in a few
big statements (creating them through the engine would take too long; acceptable in a benchmark,
never in tests): ``--big-runs`` of the 200-step pipeline with all 200 step rows, the rest of the small
ones; every step that ran has an attempt, outputs, a metric and a reuse explanation; a third of the
runs come from the trigger, with their events. Statuses: mostly succeeded, some failed and cancelled,
a few running and queued.

Each page is then requested ``--requests`` times, one after the other, after ``WARM_UP`` requests not
counted: the run list (first page; by pipeline; by status), the run page and a step page of a
200-step run, a pipeline page and the agents page. Printed: p50/p95/max of the handler's time (the
``Server-Timing`` header) and of the time the client saw, the daemon's CPU time per request (less
disturbed by other work on the machine than wall times), and the RSS of the daemon (the `sluice up`
process and its children that are Python, i.e. Sluice's own; not PostgreSQL nor NATS) when ready,
after seeding and after the requests.

Run: .venv/bin/python -m tests.bench.bench_ui [--runs 10000] [--big-runs 200] [--requests 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

import aiohttp
import asyncpg
import psutil

from daemon.runtime.embedded import DATABASE
from tests.bench.bench_dispatch import percentile
from tests.bench.harness import report, scratch_env, sluice_up, temp_dir

BIG = "big"
LAYER = 10
WARM_UP = 3
TRIGGER = "landing"
AGENTS = ("gpu-1", "cpu-1", "cpu-2", "cpu-3")
SERVER_TIMING = re.compile(r"app;dur=([0-9.]+)")


def big_pipeline(steps: int) -> str:
    """``steps`` steps in layers of ``LAYER``: each reads its predecessor in the layer before (chains),
    the first of a layer also reads the next four (a fan-in), and every third layer's last step waits
    for the one beside it (``after:``)."""
    lines = [f"kind: Pipeline\nname: {BIG}\nparams:\n  day: {{type: string}}\nsteps:"]
    for index in range(steps):
        layer, column = divmod(index, LAYER)
        lines += [f"  - name: s{index}", '    command: [work, "${params.day}", "${outputs.out}"]']
        lines.append("    outputs: [out]")
        if layer == 0:
            continue
        upstream = [index - LAYER] + ([index - LAYER + k for k in range(1, 5)] if column == 0 else [])
        lines.append("    inputs:")
        lines += [f"      in{k}: ${{steps.s{up}.outputs.out}}" for k, up in enumerate(upstream)]
        if column == LAYER - 1 and layer % 3 == 0:
            lines.append(f"    after: [s{index - 1}]")
    return "\n".join(lines) + "\n"


def small_pipeline(name: str, steps: int) -> str:
    lines = [f"kind: Pipeline\nname: {name}\nparams:\n  day: {{type: string}}\nsteps:"]
    for index in range(steps):
        lines += [f"  - name: step{index}", '    command: [work, "${params.day}", "${outputs.out}"]']
        lines.append("    outputs: [out]")
        if index:
            lines += ["    inputs:", f"      up: ${{steps.step{index - 1}.outputs.out}}"]
    return "\n".join(lines) + "\n"


TRIGGER_DOC = f"""
kind: Trigger
name: {TRIGGER}
pipeline: etl-0
on:
  nats: {{subject: "bench.ui.landing"}}
params:
  day: "${{event.data.day}}"
"""


def postgres_dsn(pgdata: Path) -> str:
    """The DSN of the daemon's embedded database, from its postmaster's ``postmaster.pid`` (line 5:
    the directory of its Unix socket)."""
    socket_dir = (pgdata / "postmaster.pid").read_text().splitlines()[4]
    return f"postgresql://postgres:@/{DATABASE}?host={socket_dir}"


async def apply(session: aiohttp.ClientSession, api: str, documents: list[str]) -> None:
    body = {"documents": [{"file": f"doc{i}.yaml", "text": text} for i, text in enumerate(documents)]}
    async with session.post(f"{api}/api/v1/apply", json=body) as response:
        assert response.status == 200, await response.text()


def run_status(rng: random.Random, index: int) -> str:
    if index < 3:
        return "running"  # the newest runs are still going
    if index < 5:
        return "queued"
    return rng.choices(("succeeded", "failed", "cancelled"), weights=(88, 9, 3))[0]


def step_statuses(status: str, count: int, rng: random.Random) -> list[str]:
    """The steps of a run with ``status``, in order: those before the point it reached succeeded
    (a few reused), then what stopped or holds it, then the steps that never ran."""
    if status == "succeeded":
        return [rng.choices(("succeeded", "reused"), weights=(4, 1))[0] for _ in range(count)]
    if status == "queued":
        return ["pending"] * count
    reached = rng.randrange(count)
    stopped = {"failed": "failed", "cancelled": "cancelled", "running": "running"}[status]
    after = "pending" if status == "running" else "skipped"
    return ["succeeded"] * reached + [stopped] + [after] * (count - reached - 1)


def explanation(status: str, run_id: uuid.UUID, step: str) -> dict | None:
    if status in ("pending", "skipped"):
        return None
    if status == "reused":
        origin = {"run_id": str(run_id), "step": step, "step_run_id": None}
        reason = f"nothing changed: the outputs of step {step} of run {run_id}"
        return {"outcome": "reused", "reused_from": origin, "changed": [], "reason": reason}
    return {"outcome": "executed", "reused_from": None, "changed": ["param:day"], "reason": "changed: day"}


async def seed(dsn: str, *, runs: int, big_runs: int, small: dict[str, int], seed_value: int = 16) -> dict:
    """Inserts ``runs`` runs (``big_runs`` of them of the big pipeline), their steps, attempts and,
    for a third of them, their trigger events, in one transaction. Returns counts and a big run's id."""
    rng = random.Random(seed_value)
    now = datetime.now(UTC)
    big_steps = [f"s{i}" for i in range(200)]
    big_every = max(1, runs // big_runs) if big_runs else 0
    run_rows, event_rows, step_rows = [], [], []
    event_id = 0
    big_ids: list[uuid.UUID] = []
    for index in range(runs):
        run_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        big = big_every and index % big_every == 1 and len(big_ids) < big_runs
        pipeline = BIG if big else rng.choice(list(small))
        names = big_steps if big else [f"step{i}" for i in range(small[pipeline])]
        status = run_status(rng, index)
        created = now - timedelta(minutes=4 * index, seconds=rng.random() * 60)
        started = None if status == "queued" else created + timedelta(seconds=1)
        finished = (
            None if status in ("queued", "running") else started + timedelta(minutes=rng.uniform(1, 30))
        )
        trigger = event = None
        if pipeline == "etl-0" or (not big and rng.random() < 0.3):
            pipeline, names = "etl-0", [f"step{i}" for i in range(small["etl-0"])]
            event_id += 1
            trigger, event = TRIGGER, event_id
            day = (created.date()).isoformat()
            fields = json.dumps({"subject": "bench.ui.landing", "data": {"day": day, "n": index}})
            event_rows.append((event_id, TRIGGER, f"msg-{index}", created, fields, "run", run_id))
        if big:
            big_ids.append(run_id)
        params = json.dumps({"day": created.date().isoformat()})
        run_rows.append(
            (
                run_id,
                pipeline,
                1,
                status,
                params,
                trigger,
                event,
                "pinned" if trigger else "default",
                created,
                started,
                finished,
            )
        )
        for position, (name, step_status) in enumerate(
            zip(names, step_statuses(status, len(names), rng), strict=True)
        ):
            ran = step_status in ("succeeded", "failed", "running", "cancelled")
            began = started + timedelta(seconds=5 * position) if ran or step_status == "reused" else None
            ended = (
                began + timedelta(seconds=rng.uniform(1, 60)) if began and step_status != "running" else None
            )
            why = explanation(step_status, run_id, name)
            step_rows.append(
                (
                    run_id,
                    name,
                    step_status,
                    f"sha256:{rng.getrandbits(256):064x}" if why else None,
                    json.dumps(
                        {"out": f"/data/runs/{run_id}/{name}/out"} if ran or step_status == "reused" else {}
                    ),
                    json.dumps(
                        [{"name": "rows", "value": rng.randrange(10**6), "extra": {}}]
                        if step_status == "succeeded"
                        else []
                    ),
                    json.dumps(why) if why else None,
                    1 if ran else 0,
                    began,
                    began,
                    ended,
                    rng.choice(AGENTS) if ran else None,
                )
            )
    conn = await asyncpg.connect(dsn)
    try:
        await insert(conn, now, event_id, event_rows, run_rows, step_rows)
    finally:
        await conn.close()
    return {
        "runs": len(run_rows),
        "big_runs": len(big_ids),
        "step_runs": len(step_rows),
        "events": len(event_rows),
        "big_run": big_ids[0],
    }


async def insert(
    conn: asyncpg.Connection,
    now: datetime,
    last_event: int,
    event_rows: list,
    run_rows: list,
    step_rows: list,
) -> None:
    """The rows :func:`seed` made, in one transaction: agents, events, runs, step runs, attempts."""
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO agents (id, name, capacity, status, last_heartbeat) "
            "VALUES ($1, $1, $2::jsonb, 'lost', $3)",
            [(name, json.dumps({"cpu": 16.0, "memory": 64 * 2**30, "gpus": []}), now) for name in AGENTS],
        )
        await conn.execute(
            """
            INSERT INTO events (id, trigger, dedupe_key, received_at, fields, outcome, run_id)
            SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::jsonb[],
                                 $6::text[], $7::uuid[])
            """,
            *zip(*event_rows, strict=True),
        )
        await conn.execute("SELECT setval('events_id_seq', $1)", max(last_event, 1))
        await conn.execute(
            """
            INSERT INTO runs (id, pipeline, version, status, params, trigger, event_id, resolution,
                              created_at, started_at, finished_at)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::jsonb[], $6::text[],
                                 $7::bigint[], $8::text[], $9::timestamptz[], $10::timestamptz[],
                                 $11::timestamptz[])
            """,
            *zip(*run_rows, strict=True),
        )
        inserted = await conn.fetch(
            """
            INSERT INTO step_runs (run_id, name, status, fingerprint, outputs, metrics, explanation,
                                   attempts_made, ready_at, started_at, finished_at)
            SELECT r, n, s, f, o, m, e, a, rd, st, fi FROM unnest($1::uuid[], $2::text[], $3::text[],
                $4::text[], $5::jsonb[], $6::jsonb[], $7::jsonb[], $8::int[], $9::timestamptz[],
                $10::timestamptz[], $11::timestamptz[]) AS x(r, n, s, f, o, m, e, a, rd, st, fi)
            RETURNING id
            """,
            *list(zip(*step_rows, strict=True))[:11],
        )
        attempts = [
            (row["id"], row_values[11], row_values[2], row_values[9], row_values[10])
            for row, row_values in zip(inserted, step_rows, strict=True)
            if row_values[11] is not None
        ]
        await conn.execute(
            """
            INSERT INTO attempts (step_run_id, number, agent_id, status, exit_code, dispatched_at,
                                  started_at, finished_at, resources)
            SELECT step_run_id, 1, agent, status,
                   CASE status WHEN 'succeeded' THEN 0 WHEN 'failed' THEN 1 END, began, began, ended,
                   '{"cpu": 1, "memory": 67108864}'
            FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
                AS x(step_run_id, agent, status, began, ended)
            """,
            *zip(*attempts, strict=True),
        )
        await conn.execute("ANALYZE")


def sluice_processes(root: psutil.Process) -> tuple[list[psutil.Process], list[str]]:
    """The daemon's own processes (``root`` and its Python children) and the names of those left out."""
    counted, left_out = [root], []
    for child in root.children(recursive=True):
        try:
            is_python = "python" in child.name() or "python" in (child.cmdline()[:1] or [""])[0]
            (counted.append(child) if is_python else left_out.append(child.name()))
        except psutil.NoSuchProcess:
            pass
    return counted, left_out


def rss_mib(root: psutil.Process) -> dict:
    counted, left_out = sluice_processes(root)
    total = 0
    for process in counted:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return {"rss_mib": round(total / 2**20, 1), "processes": len(counted), "left_out": sorted(left_out)}


async def measure(session: aiohttp.ClientSession, url: str, requests: int, daemon: psutil.Process) -> dict:
    """``requests`` GETs of ``url`` one after the other; with the daemon's CPU time per request, which
    other work on the machine disturbs less than the wall times."""
    server, client, size, cpu = [], [], 0, 0.0
    for index in range(WARM_UP + requests):
        if index == WARM_UP:
            cpu = cpu_seconds(daemon)
        started = time.perf_counter()
        async with session.get(url, allow_redirects=False) as response:
            size = len(await response.read())
            assert response.status == 200, (url, response.status)
        elapsed = (time.perf_counter() - started) * 1000
        if index >= WARM_UP:
            client.append(elapsed)
            server.append(float(SERVER_TIMING.search(response.headers["Server-Timing"]).group(1)))
    cpu_ms = (cpu_seconds(daemon) - cpu) * 1000 / requests
    return {
        "server_ms": figures(server),
        "client_ms": figures(client),
        "cpu_ms": round(cpu_ms, 1),
        "bytes": size,
    }


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def figures(samples: list[float]) -> dict:
    return {
        "p50": round(percentile(samples, 0.5), 1),
        "p95": round(percentile(samples, 0.95), 1),
        "max": round(max(samples), 1),
    }


def table(pages: dict[str, dict]) -> str:
    def row(name: str, *cells: object) -> str:
        return f"{name:<24}" + "".join(f"{cell:>9}" for cell in cells)

    header = row(
        "page (ms)", "srv p50", "srv p95", "srv max", "cli p50", "cli p95", "cli max", "cpu/req", "KiB"
    )
    lines = [header, "-" * len(header)]
    for name, page in pages.items():
        server, client = page["server_ms"], page["client_ms"]
        figures = [server[k] for k in ("p50", "p95", "max")] + [client[k] for k in ("p50", "p95", "max")]
        lines.append(row(name, *figures, page["cpu_ms"], round(page["bytes"] / 1024)))
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> dict:
    root = temp_dir()
    env = scratch_env(root / "home")
    data = root / "data"
    with sluice_up(data, env, "--agents", "0") as (process, api, _):
        daemon = psutil.Process(process.pid)
        token = (data / "credentials" / "api-token").read_text().strip()
        dsn = postgres_dsn(data / "postgres")
        memory = {"ready": rss_mib(daemon)}
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
            rng = random.Random(1)
            small = {f"etl-{i}": rng.randint(2, 6) for i in range(args.small_pipelines)}
            documents = [big_pipeline(200)] + [small_pipeline(n, k) for n, k in small.items()] + [TRIGGER_DOC]
            await apply(session, api, documents)
            started = time.perf_counter()
            seeded = await seed(dsn, runs=args.runs, big_runs=args.big_runs, small=small)
            seeded["seconds"] = round(time.perf_counter() - started, 1)
            memory["seeded"] = rss_mib(daemon)
            run = seeded.pop("big_run")
            urls = {
                "/ (first page)": "/",
                "/?pipeline=big": f"/?pipeline={BIG}",
                "/?pipeline=etl-1": "/?pipeline=etl-1",
                "/?status=failed": "/?status=failed",
                "/?status=running": "/?status=running",
                "/?trigger=landing": f"/?trigger={TRIGGER}",
                "/runs/{200-step run}": f"/runs/{run}",
                "/runs/{id}?part=live": f"/runs/{run}?part=live",
                "/runs/{id}/steps/s150": f"/runs/{run}/steps/s150",
                "/pipelines/big": f"/pipelines/{BIG}",
                "/agents": "/agents",
            }
            pages = {
                name: await measure(session, api + url, args.requests, daemon) for name, url in urls.items()
            }
            memory["after_requests"] = rss_mib(daemon)
    print(table(pages))
    print(
        "RSS (MiB) of `sluice up` and its Python children: "
        + ", ".join(f"{when} {m['rss_mib']}" for when, m in memory.items())
        + f"; not counted: {', '.join(memory['ready']['left_out']) or 'none'} (PostgreSQL runs apart)"
    )
    return {"seeded": seeded, "requests": args.requests, "warm_up": WARM_UP, "pages": pages, "memory": memory}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--big-runs", type=int, default=200)
    parser.add_argument("--small-pipelines", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50)
    report("bench_ui", asyncio.run(main(parser.parse_args())))
