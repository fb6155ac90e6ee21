"""The runner agent: advertises what it has, accepts assignments that fit, executes them, reports.

It needs NATS only (see ``runners.protocol`` for the conversation). The hot path is the assignment:
decode, check room in the agent's own ledger, reserve, reply — nothing slow happens before the reply;
fetching the source, preparing directories and starting the command happen afterwards, in the
attempt's task. Every task belongs to the agent's task group; an attempt that fails in an unexpected
way is reported as a failed attempt, never a crashed agent.

Shutdown (``stop`` set): the agent stops accepting (its heartbeat says ``draining``), waits up to
``drain_timeout_s`` for what runs, then stops the rest (reported ``lost``: the agent went away, the
step did not fail — the daemon runs it again without using a retry), waits a bounded time for its
step events to be acknowledged, sends a last heartbeat saying it stopped, and drains its NATS
connection.

Cut off (the NATS server closed the connection for good: its credentials were revoked or expired):
nothing it does can be reported any more, so it stops what runs at once and ``run`` raises
``BusError`` with the server's reason. The daemon has written those attempts off already.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from kit.nats import DRAIN_TIMEOUT_S, BusError, NatsErrors, NatsOptions, connect
from runners.execution import AcceptedAttempt, AttemptExecution
from runners.executors import STOP_GRACE_S, Executor, Outcome
from runners.ledger import Ledger, NoRoom
from runners.objectcache import DEFAULT_CAP
from runners.outbox import Outbox
from runners.protocol import (
    HEARTBEAT_INTERVAL_S,
    Assignment,
    AssignReply,
    Cancel,
    CancelReply,
    Capacity,
    Heartbeat,
    StepFinished,
    agent_inbox,
    assign_subject,
    cancel_subject,
    heartbeat_subject,
)
from runners.snapshots import fetch_source
from runners.staging import staging_dir
from runners.workspace import Workspace, misplaced

log = structlog.get_logger(__name__)

EVENTS_FLUSH_TIMEOUT_S = 10.0
"""At shutdown, how long step events still unacknowledged may take."""
BEAT_SPACING_S = 0.05
"""Beats sent early (on accept, finish) come at most this often: a busy agent changes all the time."""
REMEMBERED_FINISHED = 4096
"""Finished attempt ids kept to refuse a late duplicate of their assignment."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """How an agent presents itself and where it keeps things. ``name`` is its id: two agents on
    one host need distinct names."""

    name: str
    cache_dir: Path
    nats: NatsOptions = field(default_factory=NatsOptions)
    labels: dict[str, str] = field(default_factory=dict)
    datastores: dict[str, str] = field(default_factory=dict)
    drain_timeout_s: float = 30.0
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    keep_work_dirs: bool = False
    object_cache_bytes: int = DEFAULT_CAP
    """The most that objects downloaded from ``s3`` datastores may take in the cache dir."""

    @property
    def agent_id(self) -> str:
        return self.name


class Agent:
    def __init__(self, config: AgentConfig, capacity: Capacity, executors: dict[str, Executor]) -> None:
        self.config = config
        self.capacity = capacity
        self.executors = executors
        self.ready = asyncio.Event()
        """Set once the agent listens for assignments and has sent its first heartbeat."""
        self._ledger = Ledger(capacity)
        self._attempts: dict[int, AcceptedAttempt] = {}
        self._finished: deque[int] = deque(maxlen=REMEMBERED_FINISHED)
        self._draining = False
        self._closing = False  # our own drain or close: a closed connection is expected
        self._cut_off: str | None = None
        self._stop: asyncio.Event | None = None
        self._beat_now = asyncio.Event()
        self._stopped = asyncio.Event()
        self._nc: NATS | None = None
        self._outbox: Outbox | None = None
        self._execution: AttemptExecution | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._log = log.bind(agent=config.agent_id)

    @property
    def running(self) -> list[int]:
        """Attempt ids the agent holds: executing, or finished with their last event not yet stored."""
        return sorted(self._attempts)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down as the module docstring says.

        Raises ``BusError`` when NATS cannot be reached at start, and after a clean stop when the
        server cut the agent off (its credentials were revoked).
        """
        self._stop = stop
        connecting = asyncio.create_task(
            connect(
                self.config.nats,
                name=f"sluice-agent-{self.config.name}",
                inbox_prefix=agent_inbox(self.config.agent_id),
                on_closed=self._on_bus_closed,
            ),
            name="nats-connect",
        )
        stopping = asyncio.create_task(stop.wait(), name="stop-wait")
        try:
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not connecting.done():  # stopped before NATS answered: nothing to drain
                connecting.cancel()
            await asyncio.gather(connecting, stopping, return_exceptions=True)
        if connecting.cancelled():
            self._log.info("agent_stopped")
            return
        nc = connecting.result()
        self._nc = nc
        try:
            await self._serve(nc, stop)
        finally:
            self._closing = True
            try:
                if not nc.is_closed:
                    await asyncio.wait_for(nc.drain(), DRAIN_TIMEOUT_S + 1)
            except asyncio.CancelledError:
                with contextlib.suppress(*NatsErrors):
                    await nc.close()
                raise
            except NatsErrors as exc:  # NATS is away (reconnecting): nothing can be flushed to it
                self._log.warning("nats_drain_failed", error=str(exc) or type(exc).__name__)
                with contextlib.suppress(*NatsErrors):
                    await nc.close()
            self._log.info("agent_stopped")
        if self._cut_off is not None:
            raise BusError(f"NATS closed the agent's connection: {self._cut_off}")

    def _on_bus_closed(self, reason: str) -> None:
        if self._closing:
            return
        self._cut_off = reason
        self._log.error("agent_cut_off", reason=reason)
        if self._stop is not None:
            self._stop.set()

    async def _serve(self, nc: NATS, stop: asyncio.Event) -> None:
        js = nc.jetstream()
        self._outbox = Outbox(js, self.config.agent_id)
        self._execution = AttemptExecution(
            agent_id=self.config.agent_id,
            cache_dir=self.config.cache_dir,
            keep_work_dirs=self.config.keep_work_dirs,
            executors=self.executors,
            nc=nc,
            workspace=Workspace(
                self.config.cache_dir,
                lambda digest: fetch_source(js, digest),
                object_cache_cap=self.config.object_cache_bytes,
            ),
            outbox=self._outbox,
            log=self._log,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                assign = await nc.subscribe(assign_subject(self.config.agent_id), cb=self._on_assign)
                cancel = await nc.subscribe(cancel_subject(self.config.agent_id), cb=self._on_cancel)
                await self._heartbeat(nc)
                await nc.flush(timeout=5)
                tg.create_task(self._heartbeats(nc), name="heartbeats")
                self._log.info(
                    "agent_started",
                    executors=list(self.executors),
                    cpu=self.capacity.cpu,
                    memory=self.capacity.memory,
                    gpus=len(self.capacity.gpus),
                )
                self.ready.set()
                await stop.wait()
                await self._drain()
                with contextlib.suppress(*NatsErrors):
                    await assign.unsubscribe()
                    await cancel.unsubscribe()
                await self._outbox.close(0.0 if self._cut_off else EVENTS_FLUSH_TIMEOUT_S)
                self._stopped.set()
                self._beat_now.set()
                if not self._cut_off:
                    await self._heartbeat(nc)  # the last: the daemon learns at once that it stopped
        finally:
            self._tg = None

    # -- assignments (the hot path) ---------------------------------------------------------------

    async def _on_assign(self, msg: Msg) -> None:
        if not msg.reply:
            self._log.warning("assignment_without_reply", subject=msg.subject)
            return
        try:
            assignment = Assignment.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self._log.warning("assignment_invalid", error=str(exc))
            await self._reply(
                msg, AssignReply(accepted=False, reason=f"bad assignment: {exc}", permanent=True)
            )
            return
        attempt_id = assignment.attempt_id
        if attempt_id in self._attempts:
            # The daemon's retry of a request whose reply it missed: still accepted, still one run.
            await self._reply(msg, AssignReply(accepted=True))
            return
        reason = self._admit(assignment)
        if reason is not None:
            await self._reply(msg, AssignReply(accepted=False, reason=reason))
            self._log.info("assignment_refused", attempt=attempt_id, run_id=assignment.run_id, reason=reason)
            return
        if not await self._reply(msg, AssignReply(accepted=True)):
            self._release(attempt_id)
            del self._attempts[attempt_id]
            return
        attempt = self._attempts[attempt_id]
        assert self._tg is not None  # _admit refuses once the task group is gone
        attempt.task = self._tg.create_task(self._execute(attempt), name=f"attempt-{attempt_id}")
        self._beat_now.set()

    def _admit(self, assignment: Assignment) -> str | None:
        """Reserves room for ``assignment`` and records it; or says why not."""
        if self._draining or self._tg is None:
            return "agent is draining"
        if assignment.attempt_id in self._finished:
            return f"attempt {assignment.attempt_id} already ran on this agent"
        executor = "docker" if assignment.image is not None else "process"
        if executor not in self.executors:
            return f"agent has no {executor} executor (it has {', '.join(self.executors) or 'none'})"
        # Not for good: the daemon may have placed it with this agent's datastores as they were.
        if (where := misplaced(assignment, self.config.cache_dir, self.config.datastores)) is not None:
            return where
        try:
            gpus = self._ledger.reserve(assignment.attempt_id, assignment.resources, assignment.gpus)
        except NoRoom as exc:
            return f"no room: {exc}"
        self._attempts[assignment.attempt_id] = AcceptedAttempt(assignment=assignment, gpus=gpus)
        return None

    async def _reply(self, msg: Msg, reply: AssignReply) -> bool:
        try:
            await msg.respond(reply.encode())
        except NatsErrors as exc:
            self._log.warning("assign_reply_failed", error=str(exc) or type(exc).__name__)
            return False
        return True

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            cancel = Cancel.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self._log.warning("cancel_invalid", error=str(exc))
            return
        attempt = self._attempts.get(cancel.attempt_id)
        found = attempt is not None and attempt.executing
        if attempt is not None:
            attempt.stop.request(cancel.reason)
            self._log.info("attempt_cancel_requested", attempt=cancel.attempt_id, reason=cancel.reason)
        if msg.reply:
            with contextlib.suppress(*NatsErrors):
                await msg.respond(CancelReply(found=found).encode())

    # -- one attempt -------------------------------------------------------------------------------

    async def _execute(self, attempt: AcceptedAttempt) -> None:
        """Runs one accepted attempt to its StepFinished. Never raises but for cancellation."""
        assignment = attempt.assignment
        with structlog.contextvars.bound_contextvars(
            run_id=assignment.run_id, step=assignment.step, attempt=assignment.attempt_id
        ):
            self._log.info("attempt_accepted", number=assignment.number, image=assignment.image)
            try:
                assert self._execution is not None
                outcome, metrics = await self._execution.run(attempt)
            except Exception as exc:  # a bug here must cost one attempt, not the agent
                self._log.exception("attempt_crashed")
                outcome, metrics = Outcome(status="failed", error=f"agent error: {exc!r}"), []
            except BaseException:
                self._release(assignment.attempt_id)
                self._attempts.pop(assignment.attempt_id, None)
                raise
            self._release(assignment.attempt_id)
            attempt.executing = False
            self._finished.append(assignment.attempt_id)
            finished = StepFinished(
                attempt_id=assignment.attempt_id,
                status=outcome.status,
                exit_code=outcome.exit_code,
                error=outcome.error,
                metrics=metrics,
                started_at=outcome.started_at,
                finished_at=time.time(),
            )
            assert self._outbox is not None
            self._outbox.put(finished, on_acked=lambda: self._forget(assignment.attempt_id))
            self._log.info(
                "attempt_finished",
                status=outcome.status,
                exit_code=outcome.exit_code,
                error=outcome.error,
                metrics=len(metrics),
            )
            self._beat_now.set()

    # -- bookkeeping -------------------------------------------------------------------------------

    def _release(self, attempt_id: int) -> None:
        self._ledger.release(attempt_id)

    def _forget(self, attempt_id: int) -> None:
        self._attempts.pop(attempt_id, None)

    async def _drain(self) -> None:
        self._draining = True
        self._beat_now.set()
        tasks = {attempt.task for attempt in self._attempts.values() if attempt.task is not None}
        tasks = {task for task in tasks if not task.done()}
        if not tasks:
            return
        # Cut off, nothing can be reported: waiting for steps to finish would be work for nobody.
        drain_timeout = 0.0 if self._cut_off else self.config.drain_timeout_s
        self._log.info("agent_draining", attempts=len(tasks), timeout=drain_timeout)
        _, left = await asyncio.wait(tasks, timeout=drain_timeout) if drain_timeout else (set(), tasks)
        if not left:
            return
        reason = (
            f"agent {self.config.name} was cut off from NATS: {self._cut_off}"
            if self._cut_off
            else f"agent {self.config.name} stopped before the step finished (waited {drain_timeout:g}s)"
        )
        for attempt in self._attempts.values():
            if attempt.executing:
                attempt.stop.request(reason, status="lost")
        # Stopping takes the executor's grace period; a stuck stop is cut short after that.
        _, stuck = await asyncio.wait(left, timeout=STOP_GRACE_S + 15.0)
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck)
            self._log.error("attempts_abandoned", attempts=sorted(task.get_name() for task in stuck))

    # -- heartbeats --------------------------------------------------------------------------------

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            labels=dict(self.config.labels),
            executors=list(self.executors),  # type: ignore[arg-type]
            capacity=self.capacity,
            datastores=dict(self.config.datastores),
            staging=str(staging_dir(self.config.cache_dir)),
            running=self.running,
            draining=self._draining,
            stopped=self._stopped.is_set(),
            sent_at=time.time(),
        )

    async def _heartbeat(self, nc: NATS) -> None:
        try:
            await nc.publish(heartbeat_subject(self.config.agent_id), self.heartbeat().encode())
        except NatsErrors as exc:  # a lost beat is harmless; the next one follows
            self._log.warning("heartbeat_failed", error=str(exc) or type(exc).__name__)

    async def _heartbeats(self, nc: NATS) -> None:
        """One beat each interval, and one soon after anything changed (accept, finish, drain)."""
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.config.heartbeat_interval_s)
            self._beat_now.clear()
            if not self._stopped.is_set():
                await self._heartbeat(nc)
                await asyncio.sleep(BEAT_SPACING_S)
