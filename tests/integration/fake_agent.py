"""A tiny agent for dispatch tests: a real NATS peer speaking ``runners.protocol`` (heartbeats,
assignments, cancel, step events through JetStream) that executes nothing. Each test decides what an
attempt does with ``behaviour``; the test harness runs the scheduler and API against real servers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.js.errors
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NATS

from daemon.api import make_app
from daemon.api.access import AccessSettings
from daemon.config import DispatchSettings
from daemon.runtime import bus
from daemon.runtime.scheduler import Scheduler
from daemon.store import upsert_datastore
from kit.nats import NatsOptions
from kit.subjects import STEPS_STREAM
from runners.protocol import (
    Assignment,
    AssignReply,
    Cancel,
    CancelReply,
    Capacity,
    Gpu,
    Heartbeat,
    Metric,
    StepFinished,
    StepStarted,
    assign_subject,
    cancel_subject,
    heartbeat_subject,
    step_event_id,
    step_event_subject,
)

GiB = 1024**3
ADMIN_TOKEN = "slc_test-admin"
ACCESS = AccessSettings(admin_token=ADMIN_TOKEN)
AS_ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
"""What the CLI sends: the token, and a JSON content type on every request (bodies or none)."""


@dataclass
class Outcome:
    """How a fake attempt ends; ``hold`` keeps it running until :meth:`FakeAgent.finish`;
    ``image_digest`` is what its start reports the step's image to be."""

    status: str = "succeeded"
    exit_code: int | None = 0
    error: str | None = None
    metrics: list[Metric] = field(default_factory=list)
    hold: bool = False
    image_digest: str | None = None


Behaviour = Callable[[Assignment], Outcome]


class FakeAgent:
    def __init__(
        self,
        nc: NATS,
        agent_id: str,
        *,
        cpu: float = 4,
        memory: int = 8 * GiB,
        gpus: list[Gpu] | None = None,
        labels: dict[str, str] | None = None,
        executors: list[str] | None = None,
        datastores: dict[str, str] | None = None,
        staging: str | None = None,
        behaviour: Behaviour = lambda assignment: Outcome(),
        refuse: str | None = None,
        permanent: bool = False,
        interval: float = 0.1,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.id = agent_id
        self.capacity = Capacity(cpu=cpu, memory=memory, gpus=gpus or [])
        self.labels = labels or {}
        self.executors = executors or ["process"]
        self.datastores = datastores or {}
        self.staging = staging
        self.behaviour = behaviour
        self.refuse = refuse
        self.permanent = permanent
        self.interval = interval
        self.assignments: list[Assignment] = []
        self.accepted_at: dict[int, float] = {}
        self.running: dict[int, Assignment] = {}
        self.cancelled: list[int] = []
        self.report_running = True
        self._subs: list = []
        self._tasks: set[asyncio.Task] = set()
        self._beating: asyncio.Task | None = None

    async def start(self) -> FakeAgent:
        self._subs.append(await self.nc.subscribe(assign_subject(self.id), cb=self._on_assign))
        self._subs.append(await self.nc.subscribe(cancel_subject(self.id), cb=self._on_cancel))
        await self.beat()
        self._beating = asyncio.create_task(self._beat_loop())
        return self

    async def beat(self) -> None:
        beat = Heartbeat(
            labels=self.labels,
            executors=self.executors,
            capacity=self.capacity,
            datastores=self.datastores,
            staging=self.staging,
            running=sorted(self.running) if self.report_running else [],
            sent_at=time.time(),
        )
        await self.nc.publish(heartbeat_subject(self.id), beat.encode())

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.beat()

    async def _on_assign(self, msg) -> None:
        assignment = Assignment.decode(msg.data)
        if self.refuse is not None:
            await msg.respond(
                AssignReply(accepted=False, reason=self.refuse, permanent=self.permanent).encode()
            )
            return
        self.assignments.append(assignment)
        self.running[assignment.attempt_id] = assignment
        self.accepted_at[assignment.attempt_id] = time.perf_counter()
        await msg.respond(AssignReply(accepted=True).encode())
        outcome = self.behaviour(assignment)
        task = asyncio.create_task(self._execute(assignment, outcome))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, assignment: Assignment, outcome: Outcome) -> None:
        started = StepStarted(
            attempt_id=assignment.attempt_id,
            started_at=time.time(),
            image_digest=outcome.image_digest,
        )
        await self.publish(started)
        if not outcome.hold:
            await self.finish(assignment.attempt_id, outcome)

    async def finish(self, attempt_id: int, outcome: Outcome | None = None) -> None:
        outcome = outcome or Outcome()
        self.running.pop(attempt_id, None)
        finished = StepFinished(
            attempt_id=attempt_id,
            status=outcome.status,
            exit_code=outcome.exit_code,
            error=outcome.error,
            metrics=outcome.metrics,
            started_at=time.time(),
            finished_at=time.time(),
        )
        await self.publish(finished)

    async def publish(self, event: StepStarted | StepFinished, *, as_agent: str | None = None) -> None:
        """Publishes a step event on this agent's subject (or, to forge one, on ``as_agent``'s)."""
        agent = as_agent or self.id
        await self.js.publish(
            step_event_subject(agent, event.attempt_id, event.kind),
            event.encode(),
            headers={"Nats-Msg-Id": step_event_id(agent, event.attempt_id, event.kind)},
        )

    async def _on_cancel(self, msg) -> None:
        cancel = Cancel.decode(msg.data)
        found = cancel.attempt_id in self.running
        await msg.respond(CancelReply(found=found).encode())
        if found:
            self.cancelled.append(cancel.attempt_id)
            await self.finish(
                cancel.attempt_id, Outcome(status="cancelled", exit_code=None, error=cancel.reason)
            )

    async def stop(self) -> None:
        """Goes silent at once, as a killed agent does."""
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
            self._beating = None
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


FAST = DispatchSettings(
    heartbeat_timeout_s=1.0,
    assign_timeout_s=0.5,
    unlisted_grace_s=2.0,
    retry_backoff_s=0.05,
    sweep_interval_s=0.5,
    agent_write_interval_s=1.0,
)


class Harness:
    """The scheduler and the HTTP API on a test's database and the session's NATS, plus fake agents."""

    def __init__(self, pool, nats_url: str, data: Path, settings: DispatchSettings = FAST) -> None:
        self.pool = pool
        self.nats_url = nats_url
        self.data = data
        self.settings = settings
        self.nc: NATS | None = None
        self.scheduler: Scheduler | None = None
        self.client: TestClient | None = None
        self.agents: list[FakeAgent] = []
        self._stack: contextlib.AsyncExitStack | None = None

    async def start(self, *, fresh_stream: bool = True) -> None:
        self.nc = await bus.connect(NatsOptions(self.nats_url))
        if fresh_stream:
            # The NATS server is shared by the session; step events of earlier tests must not leak in.
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.nc.jetstream().delete_stream(STEPS_STREAM)
            (self.data / "default").mkdir(parents=True, exist_ok=True)
            await upsert_datastore(self.pool, "default", "local", {"path": str(self.data / "default")})
        self._stack = contextlib.AsyncExitStack()
        self.scheduler = await Scheduler.start(
            self._stack, pool=self.pool, nc=self.nc, settings=self.settings
        )
        sources = await bus.SourceStore.open(self.nc)
        app = make_app(pool=self.pool, nc=self.nc, sources=sources, access=ACCESS, scheduler=self.scheduler)
        self.client = TestClient(TestServer(app), headers=AS_ADMIN)
        await self.client.start_server()

    async def stop_daemon(self) -> None:
        """Stops the scheduler and API as a daemon shutdown does (agents keep running)."""
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
        if self.nc is not None:
            await self.nc.drain()
            self.nc = None

    async def close(self) -> None:
        for agent in self.agents:
            await agent.stop()
            with contextlib.suppress(Exception):
                await agent.nc.drain()
        await self.stop_daemon()

    async def agent(self, agent_id: str, **options: Any) -> FakeAgent:
        nc = await bus.connect(NatsOptions(self.nats_url), name=f"fake-{agent_id}")
        agent = await FakeAgent(nc, agent_id, **options).start()
        self.agents.append(agent)
        await self.wait_for(lambda: self._knows(agent_id), what=f"agent {agent_id} registered")
        return agent

    def _knows(self, agent_id: str) -> bool:
        assert self.scheduler is not None
        agent = self.scheduler.registry.agents.get(agent_id)
        return agent is not None and agent.accepts_work

    async def apply(self, text: str) -> None:
        assert self.client is not None
        response = await self.client.post(
            "/api/v1/apply", json={"documents": [{"file": "p.yaml", "text": text}]}
        )
        assert response.status == 200, await response.text()

    async def start_run(self, pipeline: str, *, expect: int = 201, headers=None, **body: Any) -> dict:
        assert self.client is not None
        response = await self.client.post(f"/api/v1/pipelines/{pipeline}/runs", json=body, headers=headers)
        payload = await response.json()
        assert response.status == expect, payload
        return payload

    async def get_run(self, run_id: str) -> dict:
        assert self.client is not None
        response = await self.client.get(f"/api/v1/runs/{run_id}")
        assert response.status == 200, await response.text()
        return await response.json()

    async def wait_run(self, run_id: str, status: str, within: float = 10.0) -> dict:
        run: dict = {}

        async def reached() -> bool:
            nonlocal run
            run = await self.get_run(run_id)
            return run["status"] == status

        await self.wait_for(reached, what=f"run {run_id} {status}", within=within, last=lambda: run)
        return run

    async def wait_step(self, run_id: str, step: str, predicate, within: float = 10.0) -> dict:
        found: dict = {}

        async def reached() -> bool:
            nonlocal found
            run = await self.get_run(run_id)
            found = next(item for item in run["steps"] if item["name"] == step)
            return bool(predicate(found))

        await self.wait_for(reached, what=f"step {step} of {run_id}", within=within, last=lambda: found)
        return found

    @staticmethod
    async def wait_for(check, *, what: str, within: float = 10.0, last=lambda: None) -> None:
        deadline = time.monotonic() + within
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last seen: {last()}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def harness(
    pool, nats_url: str, data: Path, settings: DispatchSettings = FAST
) -> AsyncIterator[Harness]:
    system = Harness(pool, nats_url, data, settings)
    await system.start()
    try:
        yield system
    finally:
        await system.close()
