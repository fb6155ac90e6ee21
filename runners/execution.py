"""Executing one accepted attempt: confining its paths, opening its log, preparing its directories
(source fetched, work dir made), running its command with the executor its assignment asks for,
reporting its start, reading its metrics and cleaning up. Admission, bookkeeping and the final
report stay with the agent (:mod:`runners.agent`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from nats.aio.client import Client as NATS

from runners.executors import Executor, Job, Launch, Outcome, StopRequest
from runners.logsink import AttemptLog
from runners.metrics import read_metrics
from runners.outbox import Outbox
from runners.protocol import Assignment, Metric, StepStarted
from runners.workspace import AttemptDirs, PrepareError, Workspace, confine


@dataclass(slots=True)
class AcceptedAttempt:
    """An accepted attempt, from its reply until its StepFinished is acknowledged."""

    assignment: Assignment
    gpus: tuple[int, ...]
    stop: StopRequest = field(default_factory=StopRequest)
    task: asyncio.Task[None] | None = None
    executing: bool = True  # False once the command is over and its resources are released


class AttemptExecution:
    """Runs the agent's accepted attempts to their outcome; one per connection to NATS."""

    def __init__(
        self,
        *,
        agent_id: str,
        cache_dir: Path,
        keep_work_dirs: bool,
        executors: dict[str, Executor],
        nc: NATS,
        workspace: Workspace,
        outbox: Outbox,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._agent_id = agent_id
        self._cache_dir = cache_dir
        self._keep_work_dirs = keep_work_dirs
        self._executors = executors
        self._nc = nc
        self._workspace = workspace
        self._outbox = outbox
        self._log = log

    async def run(self, attempt: AcceptedAttempt) -> tuple[Outcome, list[Metric]]:
        """The attempt's outcome and metrics; what cannot be prepared or written is a failed outcome."""
        assignment = attempt.assignment
        try:
            await asyncio.to_thread(confine, assignment, self._cache_dir)
        except PrepareError as exc:
            return Outcome(status="failed", error=str(exc)), []
        output = AttemptLog(self._nc, self._agent_id, assignment)
        try:
            await output.open()
        except OSError as exc:
            return Outcome(status="failed", error=f"cannot write the log {assignment.log_path}: {exc}"), []
        try:
            try:
                dirs = await self._workspace.prepare(assignment)
            except PrepareError as exc:
                output.note(str(exc))
                return Outcome(status="failed", error=str(exc)), []
            try:
                outcome = await self._run_in(attempt, dirs, output)
                metrics = await asyncio.to_thread(read_metrics, dirs.metrics, attempt=assignment.attempt_id)
                return outcome, metrics
            finally:
                if not self._keep_work_dirs:
                    await self._workspace.cleanup(dirs)
        finally:
            await output.close()

    async def _run_in(self, attempt: AcceptedAttempt, dirs: AttemptDirs, output: AttemptLog) -> Outcome:
        """Executes the attempt in its prepared directories, its output going to ``output``."""
        assignment = attempt.assignment
        if attempt.stop.requested:  # cancelled, or the agent gave up, while it was preparing
            output.note(attempt.stop.reason)
            return Outcome(status=attempt.stop.status, error=attempt.stop.reason)
        executor = self._executors["docker" if assignment.image is not None else "process"]
        job = Job(
            attempt_id=assignment.attempt_id,
            run_id=assignment.run_id,
            step=assignment.step,
            number=assignment.number,
            argv=list(assignment.argv),
            env=assignment.env | {"SLUICE_METRICS": str(dirs.metrics)},
            work_dir=dirs.work,
            resources=assignment.resources,
            image=assignment.image,
            gpus=list(attempt.gpus),
            mounts=_mounts(assignment, dirs.root),
            timeout_s=assignment.timeout_s,
        )

        def on_started(launch: Launch) -> None:
            self._outbox.put(
                StepStarted(
                    attempt_id=assignment.attempt_id,
                    started_at=launch.started_at,
                    image_digest=launch.image_digest,
                )
            )
            self._log.info("attempt_started", image_digest=launch.image_digest)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(output.run(), name=f"log-{assignment.attempt_id}")
            try:
                outcome = await executor.execute(job, output, attempt.stop, on_started)
                if outcome.error:
                    output.note(outcome.error)  # the log says why, too
            finally:
                await output.close()
        return outcome


def _mounts(assignment: Assignment, attempt_root: Path) -> list[str]:
    """What a container must see at the same paths: the attempt's directory (work dir and metrics
    file), the datastores the attempt uses, and the directories holding the outputs."""
    paths = [str(attempt_root), *assignment.datastores.values()]
    paths.extend(str(Path(output).parent) for output in assignment.outputs.values())
    return list(dict.fromkeys(paths))
