"""A real Agent in-process against a real NATS server; the test plays the daemon with raw nats-py and
the protocol's messages: heartbeats, assignments, step events from JetStream, live logs, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import sys
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
import psutil
import pytest
from nats.aio.client import Client as NATS
from nats.js.object_store import ObjectStore

from kit.nats import BusError, NatsOptions, connect
from kit.streams import ensure_steps_stream
from kit.subjects import SOURCES_BUCKET
from runners.agent import Agent, AgentConfig
from runners.executors import Executor
from runners.executors.docker import DockerExecutor, connect_docker
from runners.executors.process import ProcessExecutor
from runners.metrics import parse_metrics
from runners.protocol import (
    HEARTBEATS,
    Assignment,
    AssignReply,
    Cancel,
    CancelReply,
    Capacity,
    Gpu,
    Heartbeat,
    LogLines,
    Metric,
    Resources,
    StepFinished,
    StepStarted,
    assign_subject,
    cancel_subject,
    heartbeat_sender,
    log_subject,
    step_event_id,
)

GiB = 1024**3
WAIT_S = 20.0
PYTHON = sys.executable


def new_attempt_id() -> int:
    # Unique across the session's shared stream: its duplicate window would swallow a reused id.
    return random.randrange(1, 2**53)


@dataclass
class RunningAgent:
    agent: Agent
    stop: asyncio.Event
    task: asyncio.Task[None]
    cache_dir: Path

    @property
    def id(self) -> str:
        return self.agent.config.agent_id

    async def stopped(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 60.0)


@dataclass
class Daemon:
    """The daemon's half of the protocol, as a test drives it."""

    nc: NATS
    tmp_path: Path
    beats: asyncio.Queue[tuple[str, Heartbeat]] = field(default_factory=asyncio.Queue)

    def assignment(self, argv: list[str], **fields: object) -> Assignment:
        attempt_id = fields.pop("attempt_id", None) or new_attempt_id()
        values: dict[str, object] = {
            "attempt_id": attempt_id,
            "run_id": str(uuid.uuid4()),
            "pipeline": "p",
            "version": 1,
            "step": "s",
            "number": 1,
            "argv": argv,
            "env": {},
            "resources": Resources(cpu=1, memory=0),
            "datastores": {"default": str(self.tmp_path)},
            "log_path": str(self.tmp_path / "logs" / f"{attempt_id}.log"),
        }
        return Assignment(**(values | fields))

    async def assign(self, agent_id: str, assignment: Assignment) -> AssignReply:
        return AssignReply.decode(await self.request(assign_subject(agent_id), assignment.encode()))

    async def request(self, subject: str, data: bytes) -> bytes:
        """A request to an agent. "No responders" now and then, right after an agent started (seen
        on the shared test server before this change too), is what the daemon takes as "not
        listening yet" and tries again: so does this."""
        for _ in range(20):
            try:
                return (await self.nc.request(subject, data, timeout=5)).data
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.05)
        raise AssertionError(f"nobody listens on {subject}")

    async def cancel(self, agent_id: str, attempt_id: int) -> CancelReply:
        cancel = Cancel(attempt_id=attempt_id, reason="cancelled by test")
        return CancelReply.decode(await self.request(cancel_subject(agent_id), cancel.encode()))

    async def events(self, attempt_id: int, count: int = 2) -> list[StepStarted | StepFinished]:
        """The attempt's first ``count`` events as JetStream stored them, in order."""
        js = self.nc.jetstream()
        sub = await js.subscribe(f"sluice.steps.*.{attempt_id}.*", ordered_consumer=True)
        try:
            events: list[StepStarted | StepFinished] = []
            while len(events) < count:
                msg = await sub.next_msg(timeout=WAIT_S)
                kind = StepStarted if msg.subject.endswith(".started") else StepFinished
                events.append(kind.decode(msg.data))
                agent = msg.subject.split(".")[2]
                assert msg.headers is not None
                assert msg.headers["Nats-Msg-Id"] == step_event_id(agent, attempt_id, events[-1].kind)
            return events
        finally:
            await sub.unsubscribe()

    async def finished(self, attempt_id: int) -> StepFinished:
        """The attempt's StepFinished, whether or not a StepStarted came before it."""
        js = self.nc.jetstream()
        sub = await js.subscribe(f"sluice.steps.*.{attempt_id}.finished", ordered_consumer=True)
        try:
            return StepFinished.decode((await sub.next_msg(timeout=WAIT_S)).data)
        finally:
            await sub.unsubscribe()

    async def heartbeat(
        self, agent_id: str, check: Callable[[Heartbeat], bool] = lambda beat: True
    ) -> Heartbeat:
        async with asyncio.timeout(WAIT_S):
            while True:
                sender, beat = await self.beats.get()
                if sender == agent_id and check(beat):
                    return beat


@pytest.fixture
async def daemon(nats_url: str, tmp_path: Path) -> AsyncIterator[Daemon]:
    nc = await nats.connect(nats_url, connect_timeout=5)
    await ensure_steps_stream(nc.jetstream())  # as the daemon does: agents publish into it, never make it
    fake = Daemon(nc=nc, tmp_path=tmp_path)

    async def on_beat(msg) -> None:
        fake.beats.put_nowait((heartbeat_sender(msg.subject), Heartbeat.decode(msg.data)))

    await nc.subscribe(HEARTBEATS, cb=on_beat)
    yield fake
    await nc.close()  # not drain: a test may leave messages it did not read


@pytest.fixture
async def start_agent(nats_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[RunningAgent]]]:
    """Starts Agents in this test's loop; stops those still running at the end."""
    started: list[RunningAgent] = []

    async def start(
        *,
        capacity: Capacity | None = None,
        executors: dict[str, Executor] | None = None,
        **config: object,
    ) -> RunningAgent:
        name = f"agent-{uuid.uuid4().hex[:8]}"
        cache_dir = tmp_path / name / "cache"
        settings = {"name": name, "nats": NatsOptions(nats_url), "cache_dir": cache_dir} | config
        agent = Agent(
            AgentConfig(**settings),
            capacity or Capacity(cpu=4, memory=8 * GiB),
            executors if executors is not None else {"process": ProcessExecutor(grace_s=1.0)},
        )
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop), name=name)
        ready = asyncio.create_task(agent.ready.wait())
        await asyncio.wait({task, ready}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        if not agent.ready.is_set():
            ready.cancel()
            stop.set()
            await asyncio.wait_for(task, WAIT_S)  # raises the agent's own error, if it had one
            raise AssertionError("agent did not become ready")
        running = RunningAgent(agent=agent, stop=stop, task=task, cache_dir=cache_dir)
        started.append(running)
        return running

    yield start
    for running in started:
        if not running.task.done():
            await running.stopped()


def python(code: str) -> list[str]:
    return [PYTHON, "-c", code]


async def test_heartbeats_advertise_capacity_labels_and_datastores(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon
) -> None:
    gpus = [Gpu(index=0, name="declared", memory=0)]
    agent = await start_agent(
        capacity=Capacity(cpu=2.5, memory=3 * GiB, gpus=gpus),
        labels={"zone": "eu"},
        datastores={"landing": "/data/landing"},
        heartbeat_interval_s=0.2,
    )

    first = await daemon.heartbeat(agent.id)  # on the agent's own subject: that is who sent it
    second = await daemon.heartbeat(agent.id)

    assert first.capacity == Capacity(cpu=2.5, memory=3 * GiB, gpus=gpus)
    assert first.labels == {"zone": "eu"}
    assert first.datastores == {"landing": "/data/landing"}
    assert first.executors == ["process"]
    assert (first.running, first.draining) == ([], False)
    assert second.sent_at > first.sent_at


async def test_a_step_runs_with_env_outputs_metrics_and_logs(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon, tmp_path: Path
) -> None:
    agent = await start_agent()
    out = tmp_path / "data" / "runs" / "r1" / "s" / "features"
    code = """
import json, os, sys
print("hello from stdout")
print("oops on stderr", file=sys.stderr)
with open(os.path.join(os.environ["SLUICE_OUTPUT_FEATURES"], "part-0.csv"), "w") as f:
    f.write("a,b\\n")
with open(os.environ["SLUICE_METRICS"], "a") as m:
    m.write(json.dumps({"name": "rows", "value": 42, "unit": "rows"}) + "\\n")
    m.write("not json\\n")
    m.write(json.dumps({"name": "auc", "value": 0.91}) + "\\n")
print("env", os.environ.get("MODEL"), "secret" if "SLUICE_NATS_URL" in os.environ else "clean")
"""
    assignment = daemon.assignment(
        python(code),
        env={"MODEL": "prod", "SLUICE_OUTPUT_FEATURES": str(out)},
        outputs={"features": str(out)},
    )
    live = await daemon.nc.subscribe(log_subject(agent.id, assignment.run_id, assignment.step))

    reply = await daemon.assign(agent.id, assignment)
    started, finished = await daemon.events(assignment.attempt_id)

    assert reply == AssignReply(accepted=True)
    assert isinstance(started, StepStarted)
    assert (started.attempt_id, started.image_digest) == (assignment.attempt_id, None)
    assert isinstance(finished, StepFinished)
    assert (finished.status, finished.exit_code, finished.error) == ("succeeded", 0, None)
    assert finished.metrics == [
        Metric(name="rows", value=42, extra={"unit": "rows"}),
        Metric(name="auc", value=0.91),
    ]
    assert finished.started_at == started.started_at <= finished.finished_at
    assert (out / "part-0.csv").read_text() == "a,b\n"
    log = read(assignment.log_path).splitlines()
    assert sorted(log) == sorted(["hello from stdout", "oops on stderr", "env prod clean"])
    lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
    async with asyncio.timeout(WAIT_S):
        while len(lines["stdout"]) < 2 or not lines["stderr"]:
            message = LogLines.decode((await live.next_msg(timeout=WAIT_S)).data)
            assert (message.attempt_id, message.number) == (assignment.attempt_id, 1)
            lines[message.stream].extend(message.lines)
    assert lines == {"stdout": ["hello from stdout", "env prod clean"], "stderr": ["oops on stderr"]}
    # The attempt's scratch directory is gone; its outputs and log stay.
    assert not (agent.cache_dir / "attempts" / str(assignment.attempt_id)).exists()


async def test_running_attempts_are_in_heartbeats_until_finished(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon
) -> None:
    agent = await start_agent(heartbeat_interval_s=0.2)
    assignment = daemon.assignment(python("import time; time.sleep(1)"))

    assert (await daemon.assign(agent.id, assignment)).accepted
    await daemon.heartbeat(agent.id, lambda beat: beat.running == [assignment.attempt_id])
    await daemon.finished(assignment.attempt_id)
    await daemon.heartbeat(agent.id, lambda beat: beat.running == [])


async def test_an_assignment_that_does_not_fit_is_refused(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon
) -> None:
    agent = await start_agent(capacity=Capacity(cpu=2, memory=GiB))
    sleeper = daemon.assignment(python("import time; time.sleep(30)"), resources=Resources(cpu=1.5, memory=0))

    assert (await daemon.assign(agent.id, sleeper)).accepted
    too_big = await daemon.assign(agent.id, daemon.assignment(["true"], resources=Resources(cpu=1, memory=0)))
    no_memory = await daemon.assign(
        agent.id, daemon.assignment(["true"], resources=Resources(cpu=0.5, memory=2 * GiB))
    )
    no_gpu = await daemon.assign(
        agent.id, daemon.assignment(["true"], resources=Resources(cpu=0.1, memory=0, gpu=1), gpus=[0])
    )
    no_docker = await daemon.assign(
        agent.id, daemon.assignment(["true"], image="busybox", resources=Resources(cpu=0.1, memory=0))
    )

    assert too_big == AssignReply(accepted=False, reason="no room: needs 1 CPUs, 0.5 of 2 free")
    assert not no_memory.accepted
    assert "memory" in (no_memory.reason or "")
    assert no_gpu == AssignReply(accepted=False, reason="no room: has no GPU 0 (GPUs: none)")
    assert no_docker == AssignReply(accepted=False, reason="agent has no docker executor (it has process)")
    assert (await daemon.cancel(agent.id, sleeper.attempt_id)).found
    assert (await daemon.finished(sleeper.attempt_id)).status == "cancelled"
    # Its room is free again.
    assert (
        await daemon.assign(agent.id, daemon.assignment(["true"], resources=Resources(cpu=2, memory=0)))
    ).accepted


async def test_a_duplicate_assignment_is_accepted_and_runs_once(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon, tmp_path: Path
) -> None:
    agent = await start_agent()
    marker = tmp_path / "runs.txt"
    assignment = daemon.assignment(
        python(f"import time; open({str(marker)!r}, 'a').write('x'); time.sleep(0.5)")
    )

    first, second = await asyncio.gather(
        daemon.assign(agent.id, assignment), daemon.assign(agent.id, assignment)
    )
    await daemon.finished(assignment.attempt_id)
    late = await daemon.assign(agent.id, assignment)

    assert first.accepted
    assert second.accepted
    assert marker.read_text() == "x"
    assert late == AssignReply(
        accepted=False, reason=f"attempt {assignment.attempt_id} already ran on this agent"
    )


async def test_a_bad_assignment_is_refused_with_the_field(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon
) -> None:
    agent = await start_agent()
    data = msgspec.json.encode({"attempt_id": "seven"})

    reply = AssignReply.decode(await daemon.request(assign_subject(agent.id), data))

    assert (reply.accepted, reply.permanent) == (False, True)
    assert "attempt_id" in (reply.reason or "")


async def test_paths_outside_the_attempts_datastores_are_refused(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon, tmp_path: Path
) -> None:
    """The old exploit: the assignment chose the log path, so any file the agent could write."""
    agent = await start_agent(datastores={"landing": str(tmp_path / "landing")})
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")

    store = {"default": str(tmp_path / "store")}
    outside = await daemon.assign(
        agent.id, daemon.assignment(["true"], datastores=store, log_path=str(victim))
    )
    elsewhere = await daemon.assign(
        agent.id,
        daemon.assignment(["true"], datastores={"landing": "/data/landing", "default": str(tmp_path)}),
    )

    assert (outside.accepted, outside.permanent) == (False, False)  # another agent may see it right
    assert f"log {victim} is outside this agent's cache dir" in (outside.reason or "")
    assert (elsewhere.accepted, elsewhere.permanent) == (False, False)
    assert "datastore landing is at" in (elsewhere.reason or "")
    assert victim.read_text() == "precious\n"


async def test_a_failing_command(start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon) -> None:
    agent = await start_agent()
    assignment = daemon.assignment(python("import sys; print('bye'); sys.exit(3)"))

    await daemon.assign(agent.id, assignment)
    _, finished = await daemon.events(assignment.attempt_id)

    assert isinstance(finished, StepFinished)
    assert (finished.status, finished.exit_code, finished.error) == ("failed", 3, "exited with status 3")
    assert read(assignment.log_path) == "bye\n[sluice] exited with status 3\n"


async def test_a_missing_executable_fails_without_starting(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon
) -> None:
    agent = await start_agent()
    assignment = daemon.assignment(["no-such-program-here", "--flag"])

    assert (await daemon.assign(agent.id, assignment)).accepted
    finished = await daemon.finished(assignment.attempt_id)

    assert (finished.status, finished.exit_code, finished.started_at) == ("failed", None, None)
    assert finished.error == "cannot start 'no-such-program-here': no such executable"
    sub = await daemon.nc.jetstream().subscribe(
        f"sluice.steps.{assignment.attempt_id}.started", ordered_consumer=True
    )
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.5)
    finally:
        await sub.unsubscribe()


async def test_a_timeout_kills_the_whole_process_group(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon, tmp_path: Path
) -> None:
    agent = await start_agent()
    pid_file = tmp_path / "child.pid"
    # The step starts a child that ignores nothing and outlives its parent unless the group is killed.
    code = f"""
import subprocess, time
child = subprocess.Popen(["sleep", "300"])
open({str(pid_file)!r}, "w").write(str(child.pid))
print("started", flush=True)
time.sleep(300)
"""
    assignment = daemon.assignment(python(code), timeout_s=1.0)

    begun = time.monotonic()
    await daemon.assign(agent.id, assignment)
    _, finished = await daemon.events(assignment.attempt_id)

    assert isinstance(finished, StepFinished)
    assert (finished.status, finished.error) == ("failed", "timed out after 1s")
    assert finished.exit_code == 143  # SIGTERM
    assert time.monotonic() - begun < 10
    assert not _alive(int(pid_file.read_text()))
    assert read(assignment.log_path) == "started\n[sluice] timed out after 1s\n"


async def test_a_step_that_ignores_sigterm_is_killed(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon
) -> None:
    agent = await start_agent()
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    assignment = daemon.assignment(python(code), timeout_s=1.0)

    await daemon.assign(agent.id, assignment)
    finished = await daemon.finished(assignment.attempt_id)

    assert (finished.status, finished.exit_code, finished.error) == ("failed", 137, "timed out after 1s")


async def test_cancel_stops_a_running_step(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon, tmp_path: Path
) -> None:
    agent = await start_agent()
    ready = tmp_path / "ready"
    assignment = daemon.assignment(python(f"import time; open({str(ready)!r}, 'w'); time.sleep(300)"))

    await daemon.assign(agent.id, assignment)
    await eventually(ready.exists)
    reply = await daemon.cancel(agent.id, assignment.attempt_id)
    _, finished = await daemon.events(assignment.attempt_id)
    unknown = await daemon.cancel(agent.id, new_attempt_id())

    assert reply == CancelReply(found=True)
    assert isinstance(finished, StepFinished)
    assert (finished.status, finished.error) == ("cancelled", "cancelled by test")
    assert unknown == CancelReply(found=False)


async def test_the_source_snapshot_is_fetched_cached_and_the_working_directory(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon
) -> None:
    agent = await start_agent()
    archive = _tar(
        {
            "main.py": b"import os\nprint(open('data/x.txt').read().strip(), os.getcwd())\n",
            "data/x.txt": b"payload\n",
        }
    )
    digest = "sha256:" + hashlib.sha256(archive + uuid.uuid4().bytes).hexdigest()
    store = await open_sources(daemon.nc)
    await store.put(digest, archive)

    first = daemon.assignment([PYTHON, "main.py"], source_digest=digest)
    await daemon.assign(agent.id, first)
    finished = await daemon.finished(first.attempt_id)
    await store.delete(digest)  # the second attempt must come from the agent's cache
    second = daemon.assignment([PYTHON, "main.py"], source_digest=digest)
    await daemon.assign(agent.id, second)
    finished_again = await daemon.finished(second.attempt_id)

    assert (finished.status, finished_again.status) == ("succeeded", "succeeded")
    work_dir = agent.cache_dir / "attempts" / str(first.attempt_id) / "work"
    assert read(first.log_path) == f"payload {work_dir}\n"
    snapshot = agent.cache_dir / "sources" / digest.replace(":", "-")
    assert sorted(path.name for path in snapshot.iterdir()) == ["data", "main.py"]


async def test_a_missing_snapshot_fails_the_attempt(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon
) -> None:
    agent = await start_agent()
    await open_sources(daemon.nc)
    digest = "sha256:" + "0" * 64
    assignment = daemon.assignment(["true"], source_digest=digest)

    await daemon.assign(agent.id, assignment)
    finished = await daemon.finished(assignment.attempt_id)

    assert (finished.status, finished.exit_code) == ("failed", None)
    assert finished.error == f"source snapshot {digest} is not in {SOURCES_BUCKET}"


async def test_argv_never_goes_through_a_shell(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon, tmp_path: Path
) -> None:
    agent = await start_agent()
    victim = tmp_path / "x"
    victim.write_text("still here")
    tricky = f"$(echo hi); rm -rf {victim}"
    assignment = daemon.assignment(["echo", tricky, "`id`", "*"])

    await daemon.assign(agent.id, assignment)
    finished = await daemon.finished(assignment.attempt_id)

    assert finished.status == "succeeded"
    assert read(assignment.log_path) == f"{tricky} `id` *\n"
    assert victim.read_text() == "still here"


async def test_draining_refuses_new_work_and_stops_what_outlives_the_timeout(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon
) -> None:
    agent = await start_agent(drain_timeout_s=0.5, heartbeat_interval_s=0.2)
    quick = daemon.assignment(python("import time; time.sleep(0.3)"))
    slow = daemon.assignment(python("import time; time.sleep(300)"))
    await daemon.assign(agent.id, quick)
    await daemon.assign(agent.id, slow)

    agent.stop.set()
    await daemon.heartbeat(agent.id, lambda beat: beat.draining)
    refused = await daemon.assign(agent.id, daemon.assignment(["true"]))
    await asyncio.wait_for(agent.task, WAIT_S)

    assert refused == AssignReply(accepted=False, reason="agent is draining")
    assert (await daemon.finished(quick.attempt_id)).status == "succeeded"
    stopped = await daemon.finished(slow.attempt_id)
    assert stopped.status == "lost"  # the agent went away; the step did not fail
    assert stopped.error == f"agent {agent.id} stopped before the step finished (waited 0.5s)"


async def test_step_events_wait_for_jetstream_and_are_stored_once(
    nats_url: str, start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon
) -> None:
    """Without the stream, the agent keeps publishing until the stream exists again (the daemon was
    away); each event is stored once."""
    agent = await start_agent()
    js = daemon.nc.jetstream()
    config = (await js.stream_info("SLUICE_STEPS")).config
    await js.delete_stream("SLUICE_STEPS")
    try:
        assignment = daemon.assignment(["true"])
        await daemon.assign(agent.id, assignment)
        await asyncio.sleep(1.0)  # the agent has finished and is retrying by now
        assert agent.agent.running == [assignment.attempt_id]
    finally:
        await js.add_stream(config)
    _, finished = await daemon.events(assignment.attempt_id)
    assert isinstance(finished, StepFinished)
    assert finished.status == "succeeded"
    info = await js.stream_info(
        "SLUICE_STEPS", subjects_filter=f"sluice.steps.{agent.id}.{assignment.attempt_id}.>"
    )
    assert info.state.messages >= 2
    await eventually(lambda: not agent.agent.running)


async def test_a_container_step_through_the_agent(
    start_agent: Callable[..., Awaitable[RunningAgent]], daemon: Daemon, tmp_path: Path, docker_image: str
) -> None:
    client = await connect_docker()
    assert client is not None
    docker_executor = DockerExecutor(client, network="none", grace_s=1.0)
    agent = await start_agent(executors={"process": ProcessExecutor(), "docker": docker_executor})
    out = tmp_path / "data" / "out"
    script = (
        'echo \'{"name": "loss", "value": 0.5}\' >> "$SLUICE_METRICS"; '
        'echo hi > "$SLUICE_OUTPUT_OUT/f"; echo "in a container in $(pwd)"'
    )
    assignment = daemon.assignment(
        ["sh", "-c", script],
        image=docker_image,
        env={"SLUICE_OUTPUT_OUT": str(out)},
        outputs={"out": str(out)},
        resources=Resources(cpu=0.5, memory=64 * 1024**2),
    )

    beat = await daemon.heartbeat(agent.id)
    assert (await daemon.assign(agent.id, assignment)).accepted
    started, finished = await daemon.events(assignment.attempt_id)

    assert beat.executors == ["process", "docker"]
    assert isinstance(started, StepStarted)
    assert (started.image_digest or "").startswith("sha256:")
    assert isinstance(finished, StepFinished)
    assert (finished.status, finished.exit_code) == ("succeeded", 0)
    assert finished.metrics == [Metric(name="loss", value=0.5)]
    assert read(out / "f") == "hi\n"
    work_dir = agent.cache_dir / "attempts" / str(assignment.attempt_id) / "work"
    assert read(assignment.log_path) == f"in a container in {work_dir}\n"


async def test_no_nats_is_a_clear_error_within_a_bound() -> None:
    with pytest.raises(BusError, match=r"cannot connect to NATS at nats://127.0.0.1:1\b"):
        await connect(NatsOptions("nats://127.0.0.1:1"), name="t", first_timeout_s=1.0)


def test_metrics_lines() -> None:
    text = (
        '{"name": "a", "value": 1}\n\n[1]\n{"name": "b"}\n{"name": "c", "value": {"x": 1}}\n'
        '{"name": "d", "value": "ok", "step": 3}\nnot json\n'
    )

    assert parse_metrics(text) == [Metric(name="a", value=1), Metric(name="d", value="ok", extra={"step": 3})]


async def open_sources(nc: NATS) -> ObjectStore:
    """The source bucket, created as the daemon creates it (a different config would clash)."""
    from daemon.runtime.bus import SourceStore

    await SourceStore.open(nc)
    return await nc.jetstream().object_store(SOURCES_BUCKET)


def read(path: str | Path) -> str:
    return Path(path).read_text()


async def eventually(condition: Callable[[], bool]) -> None:
    """Polls ``condition`` (a file appearing, a set emptying) until it holds, within ``WAIT_S``."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 - there is nothing to wait on but the condition
            await asyncio.sleep(0.05)


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
