"""Sluice's production topology on one machine, and the failures it must ride out: a three-server NATS
cluster (routes, JetStream, Sluice's NATS trust from `sluice credentials init`), two `sluice daemon`s
on one PostgreSQL with ``SLUICE_NATS_REPLICAS=3`` and every server in ``SLUICE_NATS_URL``, and two
`sluice agent`s with credentials of their own.

:func:`failover` drives it as services do, at a steady rate: messages on a user's R3 stream that a
JetStream ``nats`` trigger consumes, and `sluice.submit.<pipeline>` requests (each retried until
answered, as a careful service does: JetStream publishes with their ``Nats-Msg-Id``, submissions
with their ``idempotency_key``). Meanwhile it kills with -9 the server leading the step events'
stream, starts it again, kills the server leading the user's stream once the first is back, starts
it again, then kills the leading daemon. Each event is one run, named by its ``n``; the outcome
holds what became of them and, per kill, how long dispatch stopped.

Shared by ``tests/e2e/test_cluster.py`` (which asserts what must hold) and
``tests/bench/bench_cluster.py`` (which prints the figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig

from kit.streams import STEPS_CONSUMER, trigger_durable
from kit.subjects import SOURCES_STREAM, STEPS_STREAM
from tests.e2e.sluice import (
    SluiceAgent,
    SluiceDaemon,
    api_all,
    apply,
    cli,
    sluice_agents,
    sluice_ups,
    user_env,
    wait_for,
)
from tests.nats_cluster import NatsCluster

STREAM = "CLUSTER_JOBS"
TRIGGER_CONSUMER = trigger_durable("jobs")
SUBJECT = "cluster.jobs"
PIPELINE = "job"
DOCUMENTS = f"""
kind: Pipeline
name: {PIPELINE}
params:
  n: {{type: string}}
steps:
  - name: only
    command: ["true", "${{params.n}}"]
    resources: {{cpu: 0.1, memory: 16Mi}}
---
kind: Trigger
name: jobs
pipeline: {PIPELINE}
on:
  nats: {{subject: "{SUBJECT}.>", stream: {STREAM}}}
params:
  n: "${{event.data.n}}"
"""

KINDS = {"trigger": "t-", "submit": "s-"}
"""The two ways events come in, and how their ``n`` begins."""
REQUEST_TIMEOUT_S = 2.0
SETTLE_TIMEOUT_S = 60.0


@dataclasses.dataclass
class Installation:
    cluster: NatsCluster
    daemons: list[SluiceDaemon]
    agents: list[SluiceAgent]
    service_creds: Path
    admin_creds: Path

    def alive_daemon(self) -> SluiceDaemon:
        return next(daemon for daemon in self.daemons if daemon.process.poll() is None)

    def leader(self) -> SluiceDaemon:
        """The daemon that runs the trigger sources now (the last to log ``leader_acquired``)."""

        def acquired_at(daemon: SluiceDaemon) -> str:
            return max((line["timestamp"] for line in daemon.log_lines("leader_acquired")), default="")

        alive = [daemon for daemon in self.daemons if daemon.process.poll() is None]
        return max(alive, key=acquired_at)


@contextlib.contextmanager
def installation(directory: Path, database_url: str, *, agents: int = 2) -> Iterator[Installation]:
    """The topology, started; everything stopped at the end (logs stay under ``directory``)."""
    env = user_env(directory / "home") | {
        "SLUICE_DATABASE_URL": database_url,
        "SLUICE_API_TOKEN": secrets.token_urlsafe(24),
        "SLUICE_NATS_REPLICAS": "3",
    }
    auth = directory / "sluice-auth.conf"
    made = cli("credentials", "init", "-o", str(auth), "--resolver-dir", "./jwt", env=env)
    assert made.returncode == 0, made.stderr
    cluster = NatsCluster(directory / "nats", config=auth)
    try:
        cluster.start()
        env |= {"SLUICE_NATS_URL": cluster.url}
        with (
            sluice_ups(directory, env) as start_daemon,
            sluice_agents(directory) as start_agent,
            ThreadPoolExecutor(4) as pool,
        ):
            daemons = list(
                pool.map(
                    lambda n: start_daemon(kind=SluiceDaemon, data_dir=directory / f"daemon-{n}"), (1, 2)
                )
            )
            first = daemons[0]
            names = [f"a{n}" for n in range(1, agents + 1)]
            agent_creds = list(pool.map(lambda name: first.creds("agent", name), names))
            service = pool.submit(
                first.creds, "service", "bus", "--submit", PIPELINE, "--publish", f"{SUBJECT}.>"
            )
            admin = pool.submit(first.creds, "admin", "ops")
            started = list(
                pool.map(
                    lambda item: start_agent(
                        first, item[0], "--cpus", "8", "--memory", "4Gi", "--gpus", "0", creds=item[1]
                    ),
                    zip(names, agent_creds, strict=True),
                )
            )
            yield Installation(cluster, daemons, started, service.result(), admin.result())
    finally:
        cluster.stop()


@dataclasses.dataclass
class Kill:
    """One kill -9: of what, when (wall clock), and when it was back (None for the daemon)."""

    what: str
    at: float
    back_at: float | None = None


@dataclasses.dataclass
class Outcome:
    published: dict[str, float]
    """Each event's ``n`` → when it was first sent (wall clock)."""
    taken: dict[str, float]
    """Each event's ``n`` → when NATS stored it (the publish acknowledged) or Sluice answered the
    submission: from then on it is Sluice's to run."""
    retries: dict[str, int]
    """Sends the services tried again (NATS or Sluice did not answer in time), by kind."""
    kills: list[Kill]
    runs: list[dict]
    """Every run of the pipeline: ``n``, ``status``, and its step's attempts (``agent``, ``status``,
    ``dispatched``, ``started`` as wall clock seconds)."""
    trigger_events: list[dict]
    stream_replicas: dict[str, int]
    """Servers holding each of Sluice's streams and the trigger's consumer, as the cluster said."""
    elections: list[tuple[float, str]]
    """When a stream or consumer got a new leader (``NatsCluster.leaders_elected``)."""

    def runs_per_event(self) -> Counter[str]:
        return Counter(run["n"] for run in self.runs)

    def figures(self) -> dict:
        """The counts, event → step started latencies (median before the first kill, and the
        largest), and per kill: for each kind of event, seconds from the kill until a step of an
        event sent after it started (``resumed_s``), the slowest of the events sent in the 5 s
        after it (``max_latency_s``), and the slowest of those taken in the 10 s after it, from
        being taken (``max_taken_to_started_s``: Sluice's share, and its consumer's election); the
        longest pause between two step starts of any event from the kill until 10 s after it
        (``max_gap_s``); when a killed server was healthy again; and when NATS had elected new
        leaders for the streams and consumers whose leader it was (``nats_new_leaders_after_s``)."""
        first_start: dict[str, float] = {}
        for run in self.runs:
            started = [attempt["started"] for attempt in run["attempts"] if attempt["started"] is not None]
            if started:
                first_start[run["n"]] = min(started)
        latency = {n: first_start[n] - sent for n, sent in self.published.items() if n in first_start}
        starts = sorted(first_start.values())
        per_kill = []
        for kill in self.kills:
            window = [kill.at] + [started for started in starts if kill.at <= started <= kill.at + 10]
            figures: dict = {"killed": kill.what}
            for kind, prefix in KINDS.items():
                after = [n for n, sent in self.published.items() if n.startswith(prefix) and sent >= kill.at]
                soon = [latency[n] for n in after if n in latency and self.published[n] <= kill.at + 5]
                resumed = min((first_start[n] for n in after if n in first_start), default=None)
                held = [
                    first_start[n] - taken
                    for n, taken in self.taken.items()
                    if n.startswith(prefix) and kill.at <= taken <= kill.at + 10 and n in first_start
                ]
                figures[kind] = {
                    "resumed_s": _rounded(resumed - kill.at if resumed else None),
                    "max_latency_s": _rounded(max(soon, default=None)),
                    "max_taken_to_started_s": _rounded(max(held, default=None)),
                }
            figures["max_gap_s"] = _rounded(
                max(b - a for a, b in itertools.pairwise(window)) if window[1:] else None
            )
            figures["back_after_s"] = _rounded(kill.back_at - kill.at if kill.back_at else None)
            elected: dict[str, float | None] = {}
            for at, asset in self.elections:
                if kill.at < at <= kill.at + 30:
                    elected.setdefault(asset, _rounded(at - kill.at))
            figures["nats_new_leaders_after_s"] = elected
            per_kill.append(figures)
        per_event = self.runs_per_event()
        before = [n for n, sent in self.published.items() if sent < self.kills[0].at - 1]
        return {
            "events": len(self.published),
            "runs": len(self.runs),
            "events_without_run": len(set(self.published) - set(per_event)),
            "events_with_several_runs": sum(1 for count in per_event.values() if count > 1),
            "runs_succeeded": sum(1 for run in self.runs if run["status"] == "succeeded"),
            "attempts": sum(len(run["attempts"]) for run in self.runs),
            "sends_retried": self.retries,
            "trigger_event_outcomes": dict(Counter(event["outcome"] for event in self.trigger_events)),
            "latency_before_kills_p50_s": {
                kind: _median([latency[n] for n in before if n.startswith(prefix) and n in latency])
                for kind, prefix in KINDS.items()
            },
            "latency_max_s": _rounded(max(latency.values(), default=None)),
            "replicas": self.stream_replicas,
            "kills": per_kill,
        }


def _median(samples: list[float]) -> float | None:
    return _rounded(statistics.median(samples) if samples else None)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


class Services:
    """The services that send events: a JetStream publisher and a submitter, each at ``rate`` per
    second, with the service credentials; every event retried until NATS (or Sluice) took it."""

    def __init__(self, nc: NATS, rate: float) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        self.interval = 1.0 / rate
        self.published: dict[str, float] = {}
        self.taken: dict[str, float] = {}
        self.retries: Counter[str] = Counter()
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._every(self._publish, "trigger"))
            tasks.create_task(self._every(self._submit, "submit"))

    async def _every(self, send, kind: str) -> None:
        number = 0
        began = time.monotonic()
        while not self.stopping.is_set():
            n = f"{KINDS[kind]}{number}"
            self.published[n] = time.time()
            while True:
                try:
                    await send(n)
                    break
                except (nats.errors.Error, TimeoutError, OSError, RuntimeError):
                    self.retries[kind] += 1
                    await asyncio.sleep(0.1)
            self.taken[n] = time.time()
            number += 1
            # A steady rate, whatever a slow send cost: the ones due meanwhile go out at once.
            await asyncio.sleep(max(0.0, began + number * self.interval - time.monotonic()))

    async def _publish(self, n: str) -> None:
        await self.js.publish(
            f"{SUBJECT}.{n}", json.dumps({"n": n}).encode(), stream=STREAM, headers={"Nats-Msg-Id": n}
        )

    async def _submit(self, n: str) -> None:
        body = json.dumps({"params": {"n": n}, "idempotency_key": n}).encode()
        answer = await self.nc.request(f"sluice.submit.{PIPELINE}", body, REQUEST_TIMEOUT_S)
        reply = json.loads(answer.data)
        if "run_id" not in reply:
            raise RuntimeError(f"submission {n} refused: {reply}")


async def connect(installation: Installation, creds: Path) -> NATS:
    async def quiet(_exc: Exception) -> None:
        """Servers going away under the client are what this scenario is about."""

    return await nats.connect(
        servers=installation.cluster.urls,
        user_credentials=str(creds),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        error_cb=quiet,
    )


async def failover(
    installation: Installation, *, rate: float = 4.0, calm_s: float = 3.0, down_s: float = 3.0
) -> Outcome:
    """The scenario (see the module's docstring); ``rate`` events per second of each kind, ``calm_s``
    of steady flow before each kill, a server down for ``down_s``."""
    cluster = installation.cluster
    admin = await connect(installation, installation.admin_creds)
    service = await connect(installation, installation.service_creds)
    kills: list[Kill] = []
    flowing: asyncio.Task | None = None
    try:
        js = admin.jetstream(timeout=5)
        await js.add_stream(
            StreamConfig(name=STREAM, subjects=[f"{SUBJECT}.>"], storage=StorageType.FILE, num_replicas=3)
        )
        await asyncio.to_thread(apply, DOCUMENTS, installation.alive_daemon().client_env)
        services = Services(service, rate)
        flowing = asyncio.create_task(services.run())
        # Step events' stream leader first (agents publish to it, daemons consume it), then the user
        # stream's leader, each started again and healthy before the next kill.
        for stream in (STEPS_STREAM, STREAM):
            await asyncio.sleep(calm_s)
            victim = (await js.stream_info(stream)).cluster.leader
            if kills and victim == kills[-1].what:  # "another" server: the other leader of the pair
                victim = next(name for name in cluster.names if name != victim)
            kill = Kill(victim, time.time())
            await asyncio.to_thread(cluster.kill, victim)
            kills.append(kill)
            await asyncio.sleep(down_s)
            await asyncio.to_thread(cluster.restart, victim)
            await asyncio.to_thread(cluster.wait_healthy, victim)
            kill.back_at = time.time()
        await asyncio.sleep(calm_s)
        leader = installation.leader()
        kill = Kill(f"daemon {leader.data_dir.name} (leader)", time.time())
        await asyncio.to_thread(leader.kill)
        kills.append(kill)
        await asyncio.sleep(calm_s + 5)  # the standby leads, what the dead one held comes back
        services.stopping.set()
        await flowing
        replicas = {
            name: 1 + len(info.cluster.replicas or [])
            for name, info in [
                (STEPS_STREAM, await js.stream_info(STEPS_STREAM)),
                (SOURCES_STREAM, await js.stream_info(SOURCES_STREAM)),
                (STREAM, await js.stream_info(STREAM)),
                (STEPS_CONSUMER, await js.consumer_info(STEPS_STREAM, STEPS_CONSUMER)),
                (TRIGGER_CONSUMER, await js.consumer_info(STREAM, TRIGGER_CONSUMER)),
            ]
        }
    finally:
        if flowing is not None and not flowing.done():
            flowing.cancel()
        await service.close()
        await admin.close()
    env = installation.alive_daemon().client_env
    await asyncio.to_thread(wait_settled, env, set(services.published))
    runs = await runs_with_attempts(env["SLUICE_DATABASE_URL"])
    events = await asyncio.to_thread(api_all, "/triggers/jobs/events", env)
    retries = {kind: services.retries[kind] for kind in KINDS}
    elections = cluster.leaders_elected()
    return Outcome(services.published, services.taken, retries, kills, runs, events, replicas, elections)


def wait_settled(env: dict[str, str], expected: set[str]) -> None:
    """Until there is a run for every expected event and none is active, or the time is up (the
    caller's assertions then say what is missing)."""

    def settled() -> bool:
        runs = api_all(f"/runs?pipeline={PIPELINE}", env)
        made = {run["params"]["n"] for run in runs}
        return made >= expected and all(run["status"] in ("succeeded", "failed", "cancelled") for run in runs)

    with contextlib.suppress(AssertionError):
        wait_for(settled, timeout=SETTLE_TIMEOUT_S, interval=0.5)


async def runs_with_attempts(database_url: str) -> list[dict]:
    """The runs with their attempts' times, read from PostgreSQL: the API gives them per run."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """
            SELECT r.params->>'n' AS n, r.status,
                   coalesce(json_agg(json_build_object(
                       'agent', a.agent_id, 'status', a.status,
                       'dispatched', extract(epoch FROM a.dispatched_at),
                       'started', extract(epoch FROM a.started_at)) ORDER BY a.number)
                     FILTER (WHERE a.id IS NOT NULL), '[]') AS attempts
            FROM runs r
            JOIN step_runs s ON s.run_id = r.id
            LEFT JOIN attempts a ON a.step_run_id = s.id
            WHERE r.pipeline = $1
            GROUP BY r.id
            """,
            PIPELINE,
        )
    finally:
        await conn.close()
    return [
        {
            "n": row["n"],
            "status": row["status"],
            "attempts": json.loads(row["attempts"]),
        }
        for row in rows
    ]
