"""The process executor: the step's argv as a local process in its own process group.

Never through a shell: ``argv[0]`` is looked up on PATH and the other items reach the program as
they are. The environment is a small base (PATH, HOME, locale, temp dir) plus the step's own, so
nothing of the agent's environment (credentials, NATS settings) leaks into a step; a step given GPUs
sees only those (``CUDA_VISIBLE_DEVICES``). The process leads a new session, so a timeout or a cancel
reaches everything it started: SIGTERM to the group, then SIGKILL after the grace period; the group is
also killed when the leader exits, so nothing the step left behind keeps running or holds its output
open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

import structlog

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

log = structlog.get_logger(__name__)

BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")
BASE_ENV_DEFAULTS = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    # Python steps otherwise hold their output until exit when it goes to a pipe: no live logs.
    "PYTHONUNBUFFERED": "1",
}
DRAIN_AFTER_EXIT_S = 2.0
"""How long output may keep flowing after the leader exited before the group is killed."""


def step_environment(env: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a step: the base variables of ``base`` (default: this process's) that
    exist, sensible defaults, then the step's ``env`` over them."""
    base = os.environ if base is None else base
    chosen = {key: base[key] for key in BASE_ENV_KEYS if key in base}
    return BASE_ENV_DEFAULTS | chosen | env


def _gpu_environment(gpus: list[int]) -> dict[str, str]:
    """A step given GPUs sees those alone, as CUDA numbers them (the agent's indices are NVML's, the
    PCI bus order that CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA use too)."""
    if not gpus:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


class ProcessExecutor(Executor):
    name = "process"

    def __init__(self, *, grace_s: float = STOP_GRACE_S) -> None:
        self._grace_s = grace_s

    async def execute(
        self, job: Job, sink: LineSink, stop: StopRequest, on_started: Callable[[Launch], None]
    ) -> Outcome:
        if not job.argv:
            return Outcome(status="failed", error="the step has an empty command")
        program = job.argv[0]
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _StepProtocol(sink),
                *job.argv,
                cwd=job.work_dir,
                env=step_environment(job.env) | _gpu_environment(job.gpus),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            return Outcome(status="failed", error=f"cannot start {program!r}: no such executable")
        except PermissionError:
            return Outcome(status="failed", error=f"cannot start {program!r}: permission denied")
        except OSError as exc:
            return Outcome(status="failed", error=f"cannot start {program!r}: {exc.strerror or exc}")
        pgid = transport.get_pid()
        started_at = time.time()
        on_started(Launch(started_at=started_at))
        log.debug("process_started", attempt=job.attempt_id, pid=pgid)
        try:
            how = await wait_exit(protocol.exited, stop, job.timeout_s)
            if how != "exited":
                await self._terminate(pgid, protocol.exited)
            # Output still in the pipes is part of the log; a grandchild holding them open is not.
            await asyncio.wait([protocol.output_closed], timeout=DRAIN_AFTER_EXIT_S)
            _kill_group(pgid, signal.SIGKILL)
            await asyncio.wait([protocol.output_closed], timeout=1.0)
        except BaseException:
            _kill_group(pgid, signal.SIGKILL)
            raise
        finally:
            transport.close()
        exit_code = _exit_code(transport.get_returncode())
        if how == "exited":
            return exit_outcome(exit_code, started_at)
        return stopped_outcome(exit_code, started_at, timeout_s=job.timeout_s, stop=stop)

    async def _terminate(self, pgid: int, exited: asyncio.Future[None]) -> None:
        """SIGTERM to the whole group, SIGKILL after the grace period."""
        _kill_group(pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), self._grace_s)
        except TimeoutError:
            _kill_group(pgid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.shield(exited), 10.0)


class _StepProtocol(asyncio.SubprocessProtocol):
    """Lines from the step's pipes into the sink as they come; ``exited`` when the leader has been
    reaped and ``output_closed`` when both pipes are closed. (asyncio's ``Process.wait()`` waits for
    both at once, so a grandchild left holding the pipes would hold it forever.)"""

    def __init__(self, sink: LineSink) -> None:
        loop = asyncio.get_running_loop()
        self._sink = sink
        self._splitters: dict[int, LineSplitter] = {1: LineSplitter(), 2: LineSplitter()}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.output_closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        stream = _STREAMS[fd]
        for line in self._splitters[fd].feed(data):
            self._sink.line(stream, line)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        splitter = self._splitters.pop(fd, None)
        if splitter is not None:
            for line in splitter.close():
                self._sink.line(_STREAMS[fd], line)
        if not self._splitters and not self.output_closed.done():
            self.output_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


_STREAMS: dict[int, Stream] = {1: "stdout", 2: "stderr"}


def _kill_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _exit_code(returncode: int | None) -> int | None:
    """A shell's view of the status: a process killed by signal N exited with 128+N."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode
