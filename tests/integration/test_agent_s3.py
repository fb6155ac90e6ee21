"""Agents and ``s3`` datastores, against a real S3 endpoint (moto_server) and real NATS: inputs
downloaded into the staging directory (a prefix, one object, a step's published output) through the
object cache (copied for a step in a container), a step's output that is not published failing the
attempt, outputs published with their manifest, the log uploaded as it grows, failed and killed
uploads that leave nothing visible, and credentials that stay out of every log. The test plays the
daemon with hand-made assignments, as in test_agent."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import obstore
import pytest

from kit.objectstore import (
    S3Location,
    manifest_key,
    open_store,
    published,
)
from runners.executors.docker import DockerExecutor, connect_docker
from runners.executors.process import ProcessExecutor
from runners.protocol import Assignment, StepFinished, Upstream
from tests.integration import test_agent
from tests.integration.test_agent import WAIT_S, Daemon, RunningAgent, new_attempt_id, python
from tests.integration.test_agent_cli import SLUICE, agent_env
from tests.integration.test_objectstore import _publish as publish

daemon = test_agent.daemon
start_agent = test_agent.start_agent

T = TypeVar("T")
StartAgent = Callable[..., Awaitable[RunningAgent]]


@pytest.fixture
def credentials(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's credentials in the environment of in-process agents."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)


def bucket(s3, name: str, prefix: str = ""):
    """A new bucket's location (with a prefix) and the store it opens, as the agent opens it."""
    location = s3.location(s3.make_bucket(name), prefix)
    return location, open_store(location, s3.env())


def staged(agent_cache: Path, run_id: str, step: str, datastore: str) -> Path:
    """Where the daemon renders an s3 datastore's root for this step run on this agent."""
    return agent_cache / "staging" / run_id / step / datastore


def s3_assignment(
    daemon: Daemon,
    agent_cache: Path,
    argv: list[str],
    stores: dict[str, S3Location],
    *,
    run_id: str | None = None,
    step: str = "s",
    inputs: dict[str, tuple[str, str]] | None = None,
    outputs: dict[str, tuple[str, str]] | None = None,
    log_in: str | None = None,
    env: dict[str, str] | None = None,
    **fields: object,
) -> Assignment:
    """An attempt whose inputs and outputs are (datastore, path) in ``stores``, with env variables
    ``IN_<NAME>``/``OUT_<NAME>`` for them; its log in ``log_in`` (an s3 datastore), else local."""
    run_id = run_id or str(uuid.uuid4())
    roots = {name: staged(agent_cache, run_id, step, name) for name in stores}
    local = {name: str(roots[store] / path) for name, (store, path) in (inputs or {}).items()}
    out = {name: str(roots[store] / path) for name, (store, path) in (outputs or {}).items()}
    attempt_id = new_attempt_id()
    number = fields.get("number", 1)
    log_path = (
        roots[log_in] / f"runs/{run_id}/{step}/logs/attempt-{number}.log"
        if log_in
        else daemon.tmp_path / "logs" / f"{attempt_id}.log"
    )
    env = (env or {}) | {f"IN_{name.upper()}": path for name, path in local.items()}
    env |= {f"OUT_{name.upper()}": path for name, path in out.items()}
    return daemon.assignment(
        argv,
        attempt_id=attempt_id,
        run_id=run_id,
        step=step,
        env=env,
        inputs=local,
        outputs=out,
        datastores={"default": str(daemon.tmp_path)} | {name: str(root) for name, root in roots.items()},
        stores=stores,
        log_path=str(log_path),
        **fields,
    )


async def keys(store, prefix: str) -> list[str]:
    return sorted([meta["path"] async for chunk in obstore.list(store, prefix) for meta in chunk])


async def read_object(store, key: str) -> str:
    return bytes(await (await obstore.get_async(store, key)).bytes_async()).decode()


PREP = """
import os, pathlib, sys, time
out = pathlib.Path(os.environ["OUT_FEATURES"])
(out / "part-0.csv").write_text("a,b\\n1,2\\n")
(out / "deep" / "er").mkdir(parents=True)
(out / "deep" / "er" / "big.bin").write_bytes(bytes(range(256)) * (17 * 4096 + 7))
print("first", flush=True)
flag = pathlib.Path(sys.argv[1])
while not flag.exists():
    time.sleep(0.05)
print("second")
"""

SCORE = """
import hashlib, os, pathlib
for name in ("RAW", "MODEL", "FEATURES", "PARTS"):
    root = pathlib.Path(os.environ["IN_" + name])
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        shown = path.relative_to(root).as_posix() if path != root else "."
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        print(name, shown, digest, "ro" if path.stat().st_mode & 0o222 == 0 else "rw")
"""


async def test_outputs_are_published_the_log_uploaded_and_inputs_downloaded_through_the_cache(
    s3, credentials, start_agent: StartAgent, daemon: Daemon, tmp_path: Path
) -> None:
    agent = await start_agent()
    beat = await daemon.heartbeat(agent.id)
    assert beat.staging == str(agent.cache_dir / "staging")
    landing, lake = (
        s3.location(s3.make_bucket("agent-landing"), "team"),
        s3.location(s3.make_bucket("agent-lake")),
    )
    landing_store, lake_store = open_store(landing, s3.env()), open_store(lake, s3.env())
    await obstore.put_async(landing_store, "customers/d1/a.csv", b"x,y\n")
    await obstore.put_async(landing_store, "customers/d1/sub/b.csv", b"z\n")
    await obstore.put_async(landing_store, "models/m.bin", b"\x00model")
    run_id = str(uuid.uuid4())
    stores = {"landing": landing, "lake": lake}

    # prep: its output and log go to the lake; the log is there while the step still runs.
    flag = tmp_path / "go"
    prep = s3_assignment(
        daemon,
        agent.cache_dir,
        [*python(PREP), str(flag)],
        stores,
        run_id=run_id,
        step="prep",
        outputs={"features": ("lake", f"runs/{run_id}/prep/features")},
        log_in="lake",
    )
    assert (await daemon.assign(agent.id, prep)).accepted
    log_key = f"runs/{run_id}/prep/logs/attempt-1.log"
    await eventually_in_store(lambda: _text_or_empty(lake_store, log_key), lambda text: "first" in text)
    flag.touch()
    finished = await daemon.finished(prep.attempt_id)

    assert (finished.status, finished.error) == ("succeeded", None)
    files = await published(lake_store, f"runs/{run_id}/prep/features")
    big = bytes(range(256)) * (17 * 4096 + 7)  # over a part: uploaded in parts
    assert files is not None
    assert sorted(files) == ["deep/er/big.bin", "part-0.csv"]
    assert files["deep/er/big.bin"].sha256 == hashlib.sha256(big).hexdigest()
    assert files["deep/er/big.bin"].size == len(big)
    assert (files["deep/er/big.bin"].e_tag or "").endswith('-3"')  # three parts of 8 MiB at most
    assert files["part-0.csv"].sha256 == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    log = await read_object(lake_store, log_key)
    assert log.startswith("first\nsecond\n[sluice] uploading output features to s3://agent-lake/runs/")
    assert "[sluice] uploaded output features: 2 files, 17.0 MiB in" in log
    assert not (agent.cache_dir / "staging" / run_id).exists()

    # A file that is not in the manifest (a killed attempt's) is no part of the output.
    await obstore.put_async(lake_store, f"runs/{run_id}/prep/features/stray.csv", b"stray")
    # A fan-out step's output: one manifest per partition; a partition without one is not there.
    await publish(lake_store, f"runs/{run_id}/fan/parts/part-00000", {"s.csv": b"0"})
    await publish(lake_store, f"runs/{run_id}/fan/parts/part-00001", {"s.csv": b"1"})
    await obstore.put_async(lake_store, f"runs/{run_id}/fan/parts/part-00002/s.csv", b"2")

    async def score(number: int) -> list[str]:
        assignment = s3_assignment(
            daemon,
            agent.cache_dir,
            python(SCORE),
            stores,
            run_id=run_id,
            step="score",
            number=number,
            inputs={
                "raw": ("landing", "customers/d1"),
                "model": ("landing", "models/m.bin"),
                "features": ("lake", f"runs/{run_id}/prep/features"),
                "parts": ("lake", f"runs/{run_id}/fan/parts"),
                "nothing": ("landing", "customers/none"),
            },
        )
        finished = await executed(daemon, agent.id, assignment)
        assert (finished.status, finished.error) == ("succeeded", None)
        assert not staged(agent.cache_dir, run_id, "score", "lake").exists()
        return (await asyncio.to_thread(Path(assignment.log_path).read_text)).splitlines()

    first = await score(1)
    sha = {
        name: hashlib.sha256(data).hexdigest()[:12]
        for name, data in [
            ("a", b"x,y\n"),
            ("b", b"z\n"),
            ("m", b"\x00model"),
            ("big", big),
            ("p", b"a,b\n1,2\n"),
            ("0", b"0"),
            ("1", b"1"),
        ]
    }
    seen = [line for line in first if not line.startswith("[sluice]")]
    assert seen == [
        f"RAW a.csv {sha['a']} ro",
        f"RAW sub/b.csv {sha['b']} ro",
        f"MODEL . {sha['m']} ro",
        f"FEATURES deep/er/big.bin {sha['big']} ro",
        f"FEATURES part-0.csv {sha['p']} ro",
        f"PARTS part-00000/s.csv {sha['0']} ro",
        f"PARTS part-00001/s.csv {sha['1']} ro",
    ]
    notes = [line for line in first if line.startswith("[sluice]")]
    assert (
        "[sluice] downloading input raw from s3://agent-landing/team/customers/d1: 2 files, 0.0 MiB" in notes
    )
    assert "[sluice] input nothing: nothing at s3://agent-landing/team/customers/none" in notes
    assert any(line.startswith("[sluice] downloaded input features: 2 files, 17.0 MiB in") for line in notes)
    assert all(line.endswith(", 0 from the agent's cache") for line in notes if "downloaded" in line)

    again = await score(2)
    assert [line for line in again if not line.startswith("[sluice]")] == seen
    cached = [line for line in again if line.startswith("[sluice] downloaded")]
    assert [line.rsplit(", ", 1)[1] for line in cached] == [
        "2 from the agent's cache",
        "1 from the agent's cache",
        "2 from the agent's cache",
        "2 from the agent's cache",
    ]


async def eventually_in_store(read: Callable[[], Awaitable[T]], holds: Callable[[T], object]) -> T:
    """Reads the store until what it reads ``holds``, within ``WAIT_S``."""
    async with asyncio.timeout(WAIT_S):
        while not holds(value := await read()):  # noqa: ASYNC110 - a store has nothing to wait on
            await asyncio.sleep(0.05)
    return value


async def _text_or_empty(store, key: str) -> str:
    try:
        return await read_object(store, key)
    except FileNotFoundError:
        return ""


WRITE = """
import os, pathlib
out = pathlib.Path(os.environ["OUT_OUT"])
(out / "good.csv").write_text("good")
if os.environ["SLUICE_ATTEMPT"] == "1":
    (out / "other.csv").write_text("other")
    (out / "bad\\x01name").write_text("no key can have this name")
"""


async def test_a_failed_upload_fails_the_attempt_and_its_retry_publishes_only_its_own_files(
    s3, credentials, start_agent: StartAgent, daemon: Daemon
) -> None:
    agent = await start_agent()
    lake, store = bucket(s3, "agent-failed-upload")
    run_id = str(uuid.uuid4())
    output = f"runs/{run_id}/s/out"

    async def attempt(number: int):
        assignment = s3_assignment(
            daemon,
            agent.cache_dir,
            python(WRITE),
            {"lake": lake},
            run_id=run_id,
            number=number,
            outputs={"out": ("lake", output)},
            env={"SLUICE_ATTEMPT": str(number)},
        )
        return assignment, await executed(daemon, agent.id, assignment)

    failed, finished = await attempt(1)
    assert finished.status == "failed"
    assert (finished.error or "").startswith(
        f"output out: cannot upload s3://agent-failed-upload/{output}/bad"
    )
    log = await asyncio.to_thread(Path(failed.log_path).read_text)
    assert "Traceback" not in log
    assert log.splitlines()[-1] == f"[sluice] {finished.error}"
    assert await published(store, output) is None

    _, finished = await attempt(2)
    assert (finished.status, finished.error) == ("succeeded", None)
    files = await published(store, output)
    assert files is not None
    assert sorted(files) == ["good.csv"]
    assert await keys(store, output) == [f"{output}/good.csv"]  # other.csv of attempt 1 is gone


async def executed(daemon: Daemon, agent_id: str, assignment: Assignment) -> StepFinished:
    """Assigns the attempt to the agent, which accepts it; its StepFinished."""
    assert (await daemon.assign(agent_id, assignment)).accepted
    return await daemon.finished(assignment.attempt_id)


def replaced(assignment: Assignment, **changes: object) -> Assignment:
    return msgspec.structs.replace(assignment, **changes)


async def test_an_input_rewritten_since_it_was_published_fails_the_attempt_naming_it(
    s3, credentials, start_agent: StartAgent, daemon: Daemon
) -> None:
    agent = await start_agent()
    lake, store = bucket(s3, "agent-rewritten")
    output = "runs/r0/prep/features"
    await publish(store, output, {"a.csv": b"a"})
    await obstore.put_async(store, f"{output}/a.csv", b"b")  # rewritten behind the manifest's back
    features = {"features": ("lake", output)}
    assignment = s3_assignment(daemon, agent.cache_dir, ["true"], {"lake": lake}, inputs=features)

    finished = await executed(daemon, agent.id, assignment)

    assert (finished.status, finished.exit_code) == ("failed", None)
    assert finished.error == (
        f"input features: cannot download s3://agent-rewritten/{output}/a.csv: "
        "it changed since it was listed or published (its ETag differs)"
    )
    log = await asyncio.to_thread(Path(assignment.log_path).read_text)
    assert log.splitlines()[-1] == f"[sluice] {finished.error}"


async def test_a_step_output_that_is_not_published_fails_the_attempt_before_it_starts(
    s3, credentials, start_agent: StartAgent, daemon: Daemon, tmp_path: Path
) -> None:
    # Its step succeeded, so it was published: without a manifest (deleted since, or a killed
    # attempt's files only) the step must not start without it, as it may without a datastore path.
    agent = await start_agent()
    lake, store = bucket(s3, "agent-unpublished")
    output = "runs/r0/prep/features"
    await obstore.put_async(store, f"{output}/half.csv", b"a killed attempt's")
    started = tmp_path / "started"
    touch = python(f"import pathlib; pathlib.Path({str(started)!r}).touch()")
    assignment = s3_assignment(
        daemon,
        agent.cache_dir,
        touch,
        {"lake": lake},
        inputs={"raw": ("lake", "landing/none"), "features": ("lake", output)},
        upstream={"features": Upstream(run_id="r0", step="prep", output="features")},
    )

    finished = await executed(daemon, agent.id, assignment)

    assert (finished.status, finished.exit_code) == ("failed", None)
    assert finished.error == (
        "input features: output features of step prep in run r0 is not published: "
        f"no manifest at or under s3://agent-unpublished/{output}"
    )
    assert not started.exists()
    log = (await asyncio.to_thread(Path(assignment.log_path).read_text)).splitlines()
    assert log == [
        "[sluice] input raw: nothing at s3://agent-unpublished/landing/none",  # a path may be empty
        f"[sluice] {finished.error}",
    ]

    # A fan-out step's partitions that each published nothing are its output, empty.
    await publish(store, "runs/r0/fan/parts/part-00000", {})
    fanned = s3_assignment(
        daemon,
        agent.cache_dir,
        touch,
        {"lake": lake},
        inputs={"parts": ("lake", "runs/r0/fan/parts")},
        upstream={"parts": Upstream(run_id="r0", step="fan", output="parts")},
    )
    finished = await executed(daemon, agent.id, fanned)
    assert (finished.status, finished.error) == ("succeeded", None)
    assert started.exists()


async def test_a_container_step_that_writes_its_input_in_place_leaves_the_agents_cache_intact(
    s3, credentials, start_agent: StartAgent, daemon: Daemon, docker_image: str
) -> None:
    client = await connect_docker()
    assert client is not None
    docker = DockerExecutor(client, network="none", grace_s=1.0)
    agent = await start_agent(executors={"process": ProcessExecutor(grace_s=1.0), "docker": docker})
    landing, store = bucket(s3, "agent-container")
    await obstore.put_async(store, "raw.csv", b"good")
    stores, raw = {"landing": landing}, {"raw": ("landing", "raw.csv")}
    # What root in the container (a setuid program in its image) can do: same size, mode restored.
    spoil = 'chmod u+w "$IN_RAW" && printf evil > "$IN_RAW" && chmod a-w "$IN_RAW"'
    container = s3_assignment(
        daemon, agent.cache_dir, ["sh", "-c", spoil], stores, inputs=raw, image=docker_image
    )
    process = s3_assignment(daemon, agent.cache_dir, ["sh", "-c", 'cat "$IN_RAW"'], stores, inputs=raw)

    spoiled = await executed(daemon, agent.id, container)
    read = await executed(daemon, agent.id, process)

    assert (spoiled.status, spoiled.error) == ("succeeded", None)
    assert (read.status, read.error) == ("succeeded", None)
    log = (await asyncio.to_thread(Path(process.log_path).read_text)).splitlines()
    assert log[-2].endswith(", 1 from the agent's cache")
    assert log[-1] == "good"


async def test_an_unset_credential_variable_fails_the_attempt_naming_it(
    s3, start_agent: StartAgent, daemon: Daemon
) -> None:
    agent = await start_agent()
    lake = s3.location(s3.make_bucket("agent-no-credentials"), env_prefix="SLUICE_TEST_UNSET")
    assignment = s3_assignment(
        daemon, agent.cache_dir, ["true"], {"lake": lake}, outputs={"o": ("lake", "o")}
    )

    finished = await executed(daemon, agent.id, assignment)

    assert finished.status == "failed"
    assert (
        finished.error
        == "bucket agent-no-credentials: environment variable SLUICE_TEST_UNSET_KEY_ID is not set"
    )


async def test_s3_roots_elsewhere_than_the_step_runs_staging_are_refused(
    s3, start_agent: StartAgent, daemon: Daemon, tmp_path: Path
) -> None:
    agent = await start_agent()
    lake = s3.location("agent-refused")
    right = s3_assignment(daemon, agent.cache_dir, ["true"], {"lake": lake})
    other_run = replaced(right, run_id=str(uuid.uuid4()))
    outside = replaced(right, datastores=right.datastores | {"lake": str(tmp_path / "lake")})

    for assignment in (other_run, outside):
        reply = await daemon.assign(agent.id, assignment)
        assert (reply.accepted, reply.permanent) == (False, False)
        assert f"s3 datastore lake is staged at {agent.cache_dir}/staging/{assignment.run_id}/s/lake" in (
            reply.reason or ""
        )


BIG_OUTPUT = """
import os, pathlib
out = pathlib.Path(os.environ["OUT_OUT"])
for number in range(int(os.environ["FILES"])):
    (out / f"part-{number:03d}.bin").write_bytes(os.urandom(4 * 1024 * 1024))
"""


@contextlib.asynccontextmanager
async def uploading_agent(
    s3, nats_url: str, daemon: Daemon, assignment: Assignment, cache: Path, store, output: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    """A ``sluice agent`` process on ``cache`` that took ``assignment`` and began uploading its
    ``output`` (a key of ``store``), for the test to signal, and the file of its own log; killed
    after, if it still runs."""
    name = f"signalled-{assignment.attempt_id}"
    agent_log = cache.parent / f"{name}.log"
    with agent_log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *[SLUICE, "agent", "--name", name, "--executor", "process", "--cache-dir", str(cache)],
            env=agent_env(nats_url, cache.parent) | s3.env(),
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
    try:
        await daemon.heartbeat(name)
        assert (await daemon.assign(name, assignment)).accepted
        await eventually_in_store(lambda: keys(store, output), bool)  # the upload has begun
        yield process, agent_log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_an_agent_killed_during_an_upload_leaves_nothing_visible_and_the_retry_publishes(
    s3, credentials, nats_url: str, start_agent: StartAgent, daemon: Daemon, tmp_path: Path
) -> None:
    lake, store = bucket(s3, "agent-killed-upload")
    run_id = str(uuid.uuid4())
    output = f"runs/{run_id}/s/out"
    cache = tmp_path / "killed-agent-cache"

    def attempt(agent_cache: Path, number: int, files: int) -> Assignment:
        return s3_assignment(
            daemon,
            agent_cache,
            python(BIG_OUTPUT),
            {"lake": lake},
            run_id=run_id,
            number=number,
            outputs={"out": ("lake", output)},
            log_in="lake",
            env={"FILES": str(files)},
        )

    first = attempt(cache, 1, 48)
    async with uploading_agent(s3, nats_url, daemon, first, cache, store, output) as (process, agent_log):
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), WAIT_S)

    assert len(await keys(store, output)) < 48
    assert await published(store, output) is None
    assert await _text_or_empty(store, manifest_key(output)) == ""

    agent = await start_agent()
    retry = attempt(agent.cache_dir, 2, 3)
    finished = await executed(daemon, agent.id, retry)

    assert (finished.status, finished.error) == ("succeeded", None)
    files = await published(store, output)
    assert files is not None
    assert sorted(files) == ["part-000.bin", "part-001.bin", "part-002.bin"]
    assert await keys(store, output) == [f"{output}/{name}" for name in sorted(files)]
    # No secret in the killed agent's own output, nor in the logs the steps left in the store.
    secret = s3.secret_access_key
    in_store = await keys(store, f"runs/{run_id}/s/logs")
    assert f"runs/{run_id}/s/logs/attempt-2.log" in in_store  # (attempt 1's, if it was killed in time)
    logs = [agent_log.read_text()] + [await read_object(store, key) for key in in_store]
    assert all(secret not in text for text in logs)
    events = [json.loads(line)["event"] for line in logs[0].splitlines() if line.startswith("{")]
    assert "attempt_accepted" in events


async def test_sigterm_during_an_upload_lets_it_publish_and_the_agent_exits_0(
    s3, nats_url: str, daemon: Daemon, tmp_path: Path
) -> None:
    lake, store = bucket(s3, "agent-sigterm-upload")
    run_id = str(uuid.uuid4())
    output = f"runs/{run_id}/s/out"
    cache = tmp_path / "sigterm-cache"
    assignment = s3_assignment(
        daemon,
        cache,
        python(BIG_OUTPUT),
        {"lake": lake},
        run_id=run_id,
        outputs={"out": ("lake", output)},
        log_in="lake",
        env={"FILES": "24"},
    )
    async with uploading_agent(s3, nats_url, daemon, assignment, cache, store, output) as (
        process,
        agent_log,
    ):
        process.send_signal(signal.SIGTERM)
        # obstore's runtime threads were busy: the interpreter must still exit cleanly (no SIGABRT).
        assert await asyncio.wait_for(process.wait(), WAIT_S) == 0, agent_log.read_text()[-2000:]

    files = await published(store, output)
    assert files is not None
    assert len(files) == 24
