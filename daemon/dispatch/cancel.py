"""Cancelling: a run cancelled by request, and the agents asked to stop its running attempts (also
attempts an agent no longer owns, and those that started in a run cancelled meanwhile)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID

import asyncpg
import structlog
from nats.aio.client import Client as NATS

from daemon.dispatch.effects import Effects
from daemon.dispatch.transitions import Transitions
from daemon.errors import Conflict, NotFound
from daemon.planning.contexts import Specs
from daemon.rules.states import FINAL_RUN
from daemon.store import attempts as attempt_store
from daemon.store import runs as run_store
from daemon.store import steps as step_store
from runners.protocol import Cancel, CancelReply, cancel_subject

log = structlog.get_logger(__name__)

CANCEL_TIMEOUT_S = 2.0


class Cancels:
    """Cancels runs by request, and asks agents to stop attempts."""

    def __init__(self, *, pool: asyncpg.Pool, nc: NATS, specs: Specs, transitions: Transitions) -> None:
        self._pool = pool
        self._nc = nc
        self._specs = specs
        self._transitions = transitions

    async def cancel_run(self, run_id: UUID, reason: str = "cancelled by request") -> run_store.RunRecord:
        """Cancels the run: it ends ``cancelled`` at once, steps not started are cancelled, and agents are
        asked to stop its running attempts (whose finish events then mark their steps cancelled).
        Cancelling a cancelled run changes nothing.

        Raises:
            NotFound: no such run.
            Conflict: the run already succeeded or failed.
        """
        effects = Effects()
        async with self._pool.acquire() as conn, conn.transaction():
            locked = await run_store.lock_run(conn, run_id)
            if locked is None:
                raise NotFound(f"run {run_id} does not exist")
            run, steps = locked
            if run.status in FINAL_RUN:
                if run.status == "cancelled":
                    return run
                raise Conflict(
                    f"run {run_id} already {run.status}; only a queued or running run can be cancelled"
                )
            ended = await run_store.finish_run(conn, run.id, "cancelled", reason)
            assert ended is not None
            changed = await step_store.set_step_statuses(
                conn, {step.id: "cancelled" for step in steps if step.status in ("pending", "ready")}
            )
            attempts = await attempt_store.cancellable_attempts(conn, run.id)
            if not run.held:
                version = await self._specs.load(conn, run.pipeline, run.version)
                await self._transitions.admit_next(conn, run.pipeline, version, effects)
        effects.runs.insert(0, ended)
        for step in changed:
            effects.steps.append((run.id, step.name, step.status, {}))
            effects.discarded.append(step.id)
        if not attempts:
            effects.finished_runs.append(run.id)
        log.info("run_cancelled", run_id=str(run.id), attempts=len(attempts))
        await self._transitions.aftermath.apply(effects)
        await self.send(attempts, reason)
        return ended

    async def send(self, attempts: Sequence[tuple[int, str]], reason: str) -> None:
        """Asks each agent to cancel its attempt (best effort, bounded, all at once); the finish events
        follow."""
        await asyncio.gather(*(self._send(attempt_id, agent_id, reason) for attempt_id, agent_id in attempts))

    async def _send(self, attempt_id: int, agent_id: str, reason: str) -> None:
        try:
            reply = await self._nc.request(
                cancel_subject(agent_id),
                Cancel(attempt_id=attempt_id, reason=reason).encode(),
                timeout=CANCEL_TIMEOUT_S,
            )
            found = CancelReply.decode(reply.data).found
            log.info("attempt_cancel_sent", attempt=attempt_id, agent=agent_id, found=found)
        except Exception as exc:  # an agent gone or slow is handled by heartbeats; keep cancelling others
            log.warning("attempt_cancel_failed", attempt=attempt_id, agent=agent_id, error=repr(exc))
