"""How an attempt's command is executed: the interface every executor implements.

An executor runs one ``Job`` to its end and says how it ended (``Outcome``). It never raises for a
failure of the step itself (a missing executable, a non-zero exit, a timeout, an image that cannot
be had): those are outcomes with an ``error``. When the awaiting task is cancelled (the agent is
going away) it kills what it started, without a grace period, and re-raises.
"""

from __future__ import annotations

import abc
import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runners.lines import LineSink
from runners.protocol import AttemptOutcome, Resources

STOP_GRACE_S = 5.0
"""Between the polite signal (SIGTERM, ``docker stop``) and the kill."""


@dataclass(frozen=True, slots=True)
class Job:
    """One attempt, as an executor needs it: final argv and env, an existing work dir."""

    attempt_id: int
    run_id: str
    step: str
    number: int
    argv: list[str]
    env: dict[str, str]
    work_dir: Path
    resources: Resources
    image: str | None = None
    gpus: list[int] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)  # directories a container needs, bound at the same path
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class Launch:
    """The command has started: when, and in which image (digest, where known)."""

    started_at: float
    image_digest: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended. ``started_at`` is None when nothing was started (``exit_code`` None)."""

    status: AttemptOutcome
    exit_code: int | None = None
    error: str | None = None
    started_at: float | None = None


class StopRequest:
    """Asks a running attempt to stop (a cancel, or an agent that stops waiting): the executor then
    terminates it politely, kills it after ``STOP_GRACE_S`` and reports ``status``."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason = ""
        self.status: AttemptOutcome = "cancelled"

    def request(self, reason: str, status: AttemptOutcome = "cancelled") -> None:
        if not self._event.is_set():
            self.reason, self.status = reason, status
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


class Executor(abc.ABC):
    name: str

    @abc.abstractmethod
    async def execute(
        self, job: Job, sink: LineSink, stop: StopRequest, on_started: Callable[[Launch], None]
    ) -> Outcome:
        """Run ``job`` until it exits, times out (``job.timeout_s``) or ``stop`` is requested; put its
        output lines into ``sink``; call ``on_started`` once, when the command has started. Returns
        when nothing of the job is left running."""


def exit_outcome(exit_code: int, started_at: float) -> Outcome:
    """The outcome of a command that exited by itself with ``exit_code`` (128+N: killed by signal N)."""
    if exit_code == 0:
        return Outcome(status="succeeded", exit_code=0, started_at=started_at)
    error = f"exited with status {exit_code}"
    if exit_code > 128 and (name := _signal_name(exit_code - 128)):
        error = f"killed by signal {name}"
    return Outcome(status="failed", exit_code=exit_code, error=error, started_at=started_at)


def stopped_outcome(
    exit_code: int | None, started_at: float, *, timeout_s: float | None, stop: StopRequest
) -> Outcome:
    """The outcome of a command the executor stopped: for its timeout, or because ``stop`` asked."""
    if stop.requested:
        return Outcome(status=stop.status, exit_code=exit_code, error=stop.reason, started_at=started_at)
    return Outcome(
        status="failed", exit_code=exit_code, error=f"timed out after {timeout_s:g}s", started_at=started_at
    )


def _signal_name(number: int) -> str | None:
    try:
        return signal.Signals(number).name
    except ValueError:
        return None


async def wait_exit(exit: asyncio.Future, stop: StopRequest, timeout_s: float | None) -> str:
    """Waits for the first of: ``exit`` done (``"exited"``), ``stop`` requested (``"stopped"``),
    ``timeout_s`` passed (``"timeout"``). ``exit`` is left running in the two other cases."""
    stopping = asyncio.create_task(stop.wait(), name="stop-request")
    try:
        done, _ = await asyncio.wait({exit, stopping}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await asyncio.gather(stopping, return_exceptions=True)
    if exit in done:
        return "exited"
    return "stopped" if stopping in done else "timeout"
