"""Executing one accepted attempt: confining its paths, opening its log, preparing its directories
(source fetched, work dir made, inputs in ``s3`` datastores downloaded), running its command with the
executor its assignment asks for, reporting its start, publishing its outputs in ``s3`` datastores,
reading its metrics and cleaning up. A log in an ``s3`` datastore is uploaded as it grows and a
last time before the attempt is reported. Admission, bookkeeping and the final report stay with
the agent (:mod:`runners.agent`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import structlog
from nats.aio.client import Client as NATS

from kit.objectstore import Manifest, StoreError
from runners.executors import Executor, Job, Launch, Outcome, StopRequest
from runners.logsink import AttemptLog
from runners.metrics import read_metrics
from runners.outbox import Outbox
from runners.protocol import Assignment, Metric, StepStarted
from runners.staging import Staging
from runners.transfers import LogShipper, TransferError, upload
from runners.workspace import AttemptDirs, PrepareError, Workspace, confine

T = TypeVar("T")


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
        staging = None
        try:
            await asyncio.to_thread(confine, assignment, self._cache_dir)
            if assignment.stores:
                staging = Staging.of(assignment, self._workspace.staging)
        except (PrepareError, StoreError) as exc:
            return Outcome(status="failed", error=str(exc)), []
        if staging is not None:
            await self._workspace.unstage(staging)
        try:
            return await self._logged(attempt, staging)
        finally:
            if staging is not None and not self._keep_work_dirs:
                await self._workspace.unstage(staging)
                if staging.inputs:  # only downloads add to the object cache
                    await self._workspace.evict_objects()

    async def _logged(
        self, attempt: AcceptedAttempt, staging: Staging | None
    ) -> tuple[Outcome, list[Metric]]:
        """``run`` from the moment the attempt has a log."""
        assignment = attempt.assignment
        output = AttemptLog(self._nc, self._agent_id, assignment)
        try:
            await output.open()
        except OSError as exc:
            return Outcome(status="failed", error=f"cannot write the log {assignment.log_path}: {exc}"), []
        dirs = self._workspace.attempt_dirs(assignment.attempt_id)
        async with self._shipping(staging):
            try:
                try:
                    prepared = await self._unless_stopped(
                        self._workspace.prepare(assignment, staging, output.report), attempt.stop
                    )
                except PrepareError as exc:
                    output.note(str(exc))
                    return Outcome(status="failed", error=str(exc)), []
                if prepared is None:  # cancelled, or the agent gave up, while inputs were downloading
                    output.note(attempt.stop.reason)
                    return Outcome(status=attempt.stop.status, error=attempt.stop.reason), []
                outcome = await self._run_in(attempt, dirs, output, staging)
                metrics = await asyncio.to_thread(read_metrics, dirs.metrics, attempt=assignment.attempt_id)
                return outcome, metrics
            finally:
                if not self._keep_work_dirs:
                    await self._workspace.cleanup(dirs)
                await output.close()

    @contextlib.asynccontextmanager
    async def _shipping(self, staging: Staging | None) -> AsyncIterator[None]:
        """Uploads the attempt's log while the body runs, when it lies in an ``s3`` datastore, and a
        last time after (the body closes the log)."""
        if staging is None or staging.log is None:
            yield
            return
        shipper = LogShipper(staging.log)
        async with asyncio.TaskGroup() as group:
            task = group.create_task(shipper.run(), name="log-upload")
            try:
                yield
            finally:
                task.cancel()
        try:
            await shipper.ship()
        except TransferError as exc:
            self._log.warning("log_upload_failed", error=str(exc))

    @staticmethod
    async def _unless_stopped(work: Awaitable[T], stop: StopRequest) -> T | None:
        """``work``'s result, or None when ``stop`` is requested first (``work`` is cancelled then)."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
            await asyncio.wait({task, stopping})
        if task.cancelled():
            return None
        return task.result()

    async def _run_in(
        self, attempt: AcceptedAttempt, dirs: AttemptDirs, output: AttemptLog, staging: Staging | None
    ) -> Outcome:
        """Executes the attempt in its prepared directories, its output going to ``output``; once it
        succeeded, publishes its outputs in ``s3`` datastores."""
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
                if outcome.status == "succeeded" and staging is not None and staging.outputs:
                    outcome = await self._publish(attempt, staging, output, outcome)
                if outcome.error:
                    output.note(outcome.error)  # the log says why, too
            finally:
                await output.close()
        return outcome

    async def _publish(
        self, attempt: AcceptedAttempt, staging: Staging, output: AttemptLog, outcome: Outcome
    ) -> Outcome:
        """``outcome`` once every output in an ``s3`` datastore is published, else why not."""
        number = attempt.assignment.number

        async def uploads() -> list[Manifest]:
            return [await upload(remote, number, output.report) for remote in staging.outputs]

        started_at = outcome.started_at
        try:
            if await self._unless_stopped(uploads(), attempt.stop) is None:
                return Outcome(status=attempt.stop.status, error=attempt.stop.reason, started_at=started_at)
        except TransferError as exc:
            return Outcome(status="failed", exit_code=0, error=str(exc), started_at=started_at)
        return outcome


def _mounts(assignment: Assignment, attempt_root: Path) -> list[str]:
    """What a container must see at the same paths: the attempt's directory (work dir and metrics
    file), the datastores the attempt uses, and the directories holding the outputs."""
    paths = [str(attempt_root), *assignment.datastores.values()]
    paths.extend(str(Path(output).parent) for output in assignment.outputs.values())
    return list(dict.fromkeys(paths))
