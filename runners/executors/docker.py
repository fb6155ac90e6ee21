"""The docker executor: the step's argv as the command of a container of ``job.image``.

Every docker SDK call runs off the event loop: short ones through ``asyncio.to_thread``, the ones that
last as long as the step (following the logs, waiting for the exit) on threads of their own. The
container gets the step's env, the work dir and every directory the step uses bound at the same path
(so paths in argv and env stay valid), CPU and memory limits from the step's resources, the reserved
NVIDIA GPUs, labels naming run, step and attempt, and runs as the agent's uid:gid so that what it
writes is owned like everything else the agent writes. It is removed once its logs are collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

import docker
import docker.errors
import structlog
from docker.models.containers import Container
from docker.types import DeviceRequest, Mount

from runners.executors import (
    STOP_GRACE_S,
    Executor,
    Job,
    Launch,
    Outcome,
    StopRequest,
    exit_outcome,
    stopped_outcome,
    wait_exit,
)
from runners.lines import LineSink, LineSplitter, Stream
from runners.threads import call_soon, in_thread

log = structlog.get_logger(__name__)

PING_TIMEOUT_S = 3.0
LOGS_AFTER_EXIT_S = 5.0
"""How long the log followers may take to deliver the rest once the container has exited."""


def docker_client(timeout_s: float = PING_TIMEOUT_S) -> docker.DockerClient | None:
    """A client of the engine that ``DOCKER_HOST`` (or the default socket) names, if it answers a
    ping; None otherwise. Blocks: call it from a thread."""
    try:
        client = docker.from_env(timeout=max(1, round(timeout_s)))
        client.ping()
    except Exception as exc:  # no socket, no permission, an old engine: all mean "no docker here"
        log.info("docker_unavailable", error=str(exc) or type(exc).__name__)
        return None
    # Longer than a ping for everything after it: creating a container on a busy engine takes time.
    client.api.timeout = 60
    return client


async def connect_docker(timeout_s: float = PING_TIMEOUT_S) -> docker.DockerClient | None:
    """``docker_client`` off the loop, bounded by ``timeout_s`` even when the socket hangs."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(docker_client, timeout_s), timeout_s + 1.0)
    except TimeoutError:
        log.info("docker_unavailable", error="ping timed out")
        return None


class DockerExecutor(Executor):
    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        network: str | None = None,
        user: str | None = None,
        grace_s: float = STOP_GRACE_S,
    ) -> None:
        self._client = client
        self._network = network
        self._user = user if user is not None else f"{os.getuid()}:{os.getgid()}"
        self._grace_s = grace_s

    async def execute(
        self, job: Job, sink: LineSink, stop: StopRequest, on_started: Callable[[Launch], None]
    ) -> Outcome:
        if job.image is None:
            return Outcome(status="failed", error="the docker executor needs an image")
        try:
            image_digest = await asyncio.to_thread(self._ensure_image, job.image)
            container = await asyncio.to_thread(self._create, job)
        except docker.errors.DockerException as exc:
            return Outcome(status="failed", error=f"cannot create a container of {job.image}: {_says(exc)}")
        try:
            return await self._run(container, job, sink, stop, on_started, image_digest)
        finally:
            # Shielded: a cancelled agent still removes the container it made.
            await asyncio.shield(asyncio.to_thread(_remove, container))

    async def _run(
        self,
        container: Container,
        job: Job,
        sink: LineSink,
        stop: StopRequest,
        on_started: Callable[[Launch], None],
        image_digest: str | None,
    ) -> Outcome:
        try:
            await asyncio.to_thread(container.start)
        except docker.errors.DockerException as exc:
            return Outcome(status="failed", error=f"cannot start the container: {_says(exc)}")
        started_at = time.time()
        on_started(Launch(started_at=started_at, image_digest=image_digest))
        log.debug("container_started", attempt=job.attempt_id, container=container.short_id)
        followers = [_follow(container, "stdout", sink, job), _follow(container, "stderr", sink, job)]
        exited = in_thread(container.wait, name=f"wait-{job.attempt_id}")
        try:
            how = await wait_exit(exited, stop, job.timeout_s)
            if how != "exited":
                # The engine sends SIGTERM, then SIGKILL after the grace period.
                await asyncio.to_thread(container.stop, timeout=max(1, round(self._grace_s)))
                await asyncio.wait_for(asyncio.shield(exited), self._grace_s + 30.0)
            await asyncio.wait(followers, timeout=LOGS_AFTER_EXIT_S)
        except BaseException:
            with contextlib.suppress(docker.errors.DockerException):
                await asyncio.shield(asyncio.to_thread(container.kill))
            raise
        try:
            status = exited.result()
        except docker.errors.DockerException as exc:
            return Outcome(status="failed", error=f"lost the container: {_says(exc)}", started_at=started_at)
        exit_code = int(status.get("StatusCode", -1))
        if how == "exited":
            return exit_outcome(exit_code, started_at)
        return stopped_outcome(exit_code, started_at, timeout_s=job.timeout_s, stop=stop)

    def _ensure_image(self, image: str) -> str | None:
        """The image's digest (a repo digest where it has one, its id otherwise); pulls it if missing."""
        try:
            found = self._client.images.get(image)
        except docker.errors.ImageNotFound:
            found = self._client.images.pull(image)
        digests = found.attrs.get("RepoDigests") or []
        return digests[0] if digests else found.id

    def _create(self, job: Job) -> Container:
        work_dir = str(job.work_dir)
        binds = list(dict.fromkeys(job.mounts))
        if not any(job.work_dir.is_relative_to(path) for path in binds):
            binds.append(work_dir)
        resources = job.resources
        options: dict[str, object] = {
            "command": list(job.argv),
            "environment": dict(job.env),
            "working_dir": work_dir,
            "mounts": [Mount(target=path, source=path, type="bind") for path in binds],
            "labels": {
                "sluice.run": job.run_id,
                "sluice.step": job.step,
                "sluice.attempt": str(job.attempt_id),
            },
            "user": self._user,
            "detach": True,
            "tty": False,
            "stdin_open": False,
        }
        if resources.cpu > 0:
            options["nano_cpus"] = int(resources.cpu * 1e9)
        if resources.memory > 0:
            options["mem_limit"] = resources.memory
        if job.gpus:
            options["device_requests"] = [
                DeviceRequest(device_ids=[str(index) for index in job.gpus], capabilities=[["gpu"]])
            ]
        if self._network is not None:
            options["network_mode"] = self._network
        return self._client.containers.create(job.image, **options)


def _follow(container: Container, stream: Stream, sink: LineSink, job: Job) -> asyncio.Future[None]:
    """Follows one of the container's streams on a thread of its own, handing lines to ``sink`` on
    the loop; resolves when the stream ends (the container has exited)."""
    loop = asyncio.get_running_loop()
    splitter = LineSplitter()

    def deliver(chunk: bytes | None) -> None:
        lines = splitter.feed(chunk) if chunk is not None else splitter.close()
        for line in lines:
            sink.line(stream, line)

    def follow() -> None:
        try:
            chunks = container.logs(
                stdout=stream == "stdout", stderr=stream == "stderr", stream=True, follow=True
            )
            for chunk in chunks:
                call_soon(loop, deliver, chunk)
        except docker.errors.DockerException as exc:
            log.warning("container_logs_failed", attempt=job.attempt_id, stream=stream, error=_says(exc))
        finally:
            call_soon(loop, deliver, None)

    return in_thread(follow, name=f"{stream}-{job.attempt_id}")


def _remove(container: Container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.DockerException as exc:
        log.warning("container_remove_failed", container=container.short_id, error=_says(exc))


def _says(exc: docker.errors.DockerException) -> str:
    """The engine's own explanation where it gave one, on one line."""
    explanation = getattr(exc, "explanation", None)
    text = explanation if explanation else str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split())
