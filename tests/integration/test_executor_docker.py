"""The docker executor on a real engine (skipped without one, unless SLUICE_REQUIRE_DOCKER=1).

Containers get network "none": the engines in CI and on development machines run without a bridge.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from runners.executors import Job, Launch, Outcome, StopRequest
from runners.executors.docker import DockerExecutor, connect_docker
from runners.lines import Stream
from runners.protocol import Resources

MiB = 1024**2


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[Stream, str]] = []

    def line(self, stream: Stream, text: str) -> None:
        self.lines.append((stream, text))

    def of(self, stream: Stream) -> list[str]:
        return [text for kind, text in self.lines if kind == stream]


@pytest.fixture
def client(docker_image: str) -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=60)
    yield client
    client.close()


@pytest.fixture
def attempt(tmp_path: Path) -> Path:
    work = tmp_path / "attempt" / "work"
    work.mkdir(parents=True)
    return work


def job(image: str, work: Path, argv: list[str], **fields: object) -> Job:
    values: dict[str, object] = {
        "attempt_id": random.randrange(1, 2**53),
        "run_id": "run-1",
        "step": "s",
        "number": 1,
        "argv": argv,
        "env": {},
        "work_dir": work,
        "resources": Resources(cpu=0.5, memory=64 * MiB),
        "image": image,
        "mounts": [str(work.parent)],
    }
    return Job(**(values | fields))


async def execute(
    client: docker.DockerClient, job: Job, stop: StopRequest | None = None
) -> tuple[Outcome, Lines, list[Launch]]:
    sink, launches = Lines(), []
    executor = DockerExecutor(client, network="none", grace_s=1.0)
    outcome = await executor.execute(job, sink, stop or StopRequest(), launches.append)
    return outcome, sink, launches


def containers_of(client: docker.DockerClient, attempt_id: int) -> list:
    return client.containers.list(all=True, filters={"label": f"sluice.attempt={attempt_id}"})


async def test_an_engine_is_found(docker_image: str) -> None:
    assert await connect_docker() is not None


async def test_a_container_step_with_env_mounts_and_outputs(
    client: docker.DockerClient, docker_image: str, attempt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "data" / "out"
    out.mkdir(parents=True)
    script = 'echo "hello $GREETING"; echo oops >&2; echo written > "$OUT/f"; pwd; id -u'
    the_job = job(
        docker_image,
        attempt,
        ["sh", "-c", script],
        env={"GREETING": "world", "OUT": str(out)},
        mounts=[str(attempt.parent), str(out.parent)],
    )

    outcome, sink, launches = await execute(client, the_job)

    assert (outcome.status, outcome.exit_code, outcome.error) == ("succeeded", 0, None)
    assert sink.of("stdout") == ["hello world", str(attempt), str(os.getuid())]
    assert sink.of("stderr") == ["oops"]
    assert (out / "f").read_text() == "written\n"
    assert (out / "f").stat().st_uid == os.getuid()
    assert len(launches) == 1
    assert (launches[0].image_digest or "").startswith("sha256:")
    assert containers_of(client, the_job.attempt_id) == []


async def test_the_container_is_limited_labelled_and_cancellable(
    client: docker.DockerClient, docker_image: str, attempt: Path
) -> None:
    the_job = job(
        docker_image, attempt, ["busybox", "sleep", "300"], resources=Resources(cpu=0.5, memory=64 * MiB)
    )
    stop = StopRequest()
    running = asyncio.create_task(execute(client, the_job, stop))

    async with asyncio.timeout(30):
        while not (found := await asyncio.to_thread(containers_of, client, the_job.attempt_id)):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    attrs = found[0].attrs
    stop.request("cancelled by test")
    outcome, _, _ = await asyncio.wait_for(running, 30)

    assert attrs["Config"]["Labels"] == {
        "sluice.run": "run-1",
        "sluice.step": "s",
        "sluice.attempt": str(the_job.attempt_id),
    }
    assert attrs["Config"]["Cmd"] == ["busybox", "sleep", "300"]
    assert attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert attrs["HostConfig"]["Memory"] == 64 * MiB
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    assert [mount["Destination"] for mount in attrs["Mounts"]] == [str(attempt.parent)]
    assert (outcome.status, outcome.error) == ("cancelled", "cancelled by test")
    assert outcome.exit_code in (137, 143)
    assert await asyncio.to_thread(containers_of, client, the_job.attempt_id) == []


async def test_a_container_past_its_timeout_is_stopped(
    client: docker.DockerClient, docker_image: str, attempt: Path
) -> None:
    the_job = job(docker_image, attempt, ["busybox", "sleep", "300"], timeout_s=1.0)

    outcome, _, _ = await asyncio.wait_for(execute(client, the_job), 60)

    assert (outcome.status, outcome.error) == ("failed", "timed out after 1s")
    assert outcome.exit_code in (137, 143)
    assert containers_of(client, the_job.attempt_id) == []


async def test_a_failing_container(client: docker.DockerClient, docker_image: str, attempt: Path) -> None:
    outcome, sink, _ = await execute(client, job(docker_image, attempt, ["sh", "-c", "echo bye; exit 4"]))

    assert (outcome.status, outcome.exit_code, outcome.error) == ("failed", 4, "exited with status 4")
    assert sink.of("stdout") == ["bye"]


async def test_a_missing_executable_in_the_image(
    client: docker.DockerClient, docker_image: str, attempt: Path
) -> None:
    the_job = job(docker_image, attempt, ["no-such-program"])

    outcome, _, launches = await execute(client, the_job)

    assert (outcome.status, outcome.exit_code, launches) == ("failed", None, [])
    assert (outcome.error or "").startswith("cannot start the container:")
    assert "no-such-program" in (outcome.error or "")
    assert containers_of(client, the_job.attempt_id) == []


async def test_an_image_that_cannot_be_had(
    client: docker.DockerClient, docker_image: str, attempt: Path
) -> None:
    outcome, _, _ = await execute(client, job("sluice-test/no-such-image:1", attempt, ["true"]))

    assert (outcome.status, outcome.exit_code) == ("failed", None)
    assert (outcome.error or "").startswith("cannot create a container of sluice-test/no-such-image:1:")
