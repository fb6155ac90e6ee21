"""Agent supervision: heartbeats in, lost agents and lost attempts out.

A heartbeat's agent is the name in its subject (only that agent may publish there). Every heartbeat
updates the in-memory registry; the database row is written only when what the agent
advertises changed, or every ``agent_write_interval_s``. An agent silent for longer than the heartbeat
timeout (counted from the daemon's start for agents not heard from yet) is ``lost``: its active
attempts are lost and their steps ready again, to be placed elsewhere (this does not count as a retry).
A live agent that does not list an attempt the daemon thinks it runs, for longer than
``unlisted_grace_s``, has lost that attempt; so has one that another daemon placed and no longer
follows (it died between committing the attempt and sending its assignment), which the sweep finds in
the database. An agent that runs an attempt the daemon has written off (lost or cancelled) is asked to
cancel it.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from daemon.config import DispatchSettings
from daemon.dispatch.cancel import Cancels
from daemon.dispatch.dispatcher import Dispatcher
from daemon.dispatch.registry import AgentState, Registry
from daemon.runtime.refusals import Refusals
from daemon.store import agents as agent_store
from daemon.store import attempts as attempt_store
from kit.subjects import check_agent_name
from runners.protocol import HEARTBEATS, Capacity, Heartbeat, heartbeat_sender

log = structlog.get_logger(__name__)

STRAY_CHECK_INTERVAL_S = 10.0
SILENCE_MARGIN_S = 0.002
"""How long past an agent's timeout the monitor wakes (silence must *exceed* the timeout)."""


class AgentMonitor:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        nc: NATS,
        registry: Registry,
        dispatcher: Dispatcher,
        cancels: Cancels,
        settings: DispatchSettings,
    ) -> None:
        self._pool = pool
        self._nc = nc
        self._registry = registry
        self._dispatcher = dispatcher
        self._cancels = cancels
        self._settings = settings
        self._sub = None
        self._stray_checked: dict[int, float] = {}
        self._refusals = Refusals("heartbeat_refused")

    async def load(self, started: float) -> None:
        """Agents known from the database count as silent since ``started`` (monotonic)."""
        for record in await agent_store.list_agents(self._pool):
            if record.status in ("lost", "stopped"):
                continue
            self._registry.known(
                AgentState(
                    id=record.id,
                    name=record.name,
                    labels=record.labels,
                    executors=record.executors,
                    capacity=msgspec.convert(record.capacity, Capacity),
                    datastores=record.datastores,
                    status="ready",
                    last_seen=started,
                )
            )

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(HEARTBEATS, cb=self._on_heartbeat)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error as exc:
                log.warning("heartbeat_unsubscribe_failed", error=repr(exc))

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            agent_id = heartbeat_sender(msg.subject)
            check_agent_name(agent_id)
            beat = Heartbeat.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            self._refusals.refuse(msg.subject, str(exc))
            return
        try:
            await self.heartbeat(agent_id, beat)
        except Exception:  # one bad beat must not stop the subscription; the next one retries
            log.exception("heartbeat_failed", agent=agent_id)

    async def heartbeat(self, agent_id: str, beat: Heartbeat) -> None:
        now = time.monotonic()
        was = self._registry.agents.get(agent_id)
        if beat.stopped:
            if was is not None and was.status != "stopped":
                await self._stopped(was, now)
            return
        came_back = was is not None and was.status in ("lost", "stopped")
        if was is None or not was.written:
            # Attempts reference the agent's row: it must exist before the agent can take work.
            await self._write(agent_id, beat, "draining" if beat.draining else "ready")
        agent, more_room = self._registry.beat(agent_id, beat, now)
        if came_back or was is None or not was.seen:
            log.info("agent_joined", agent=agent.id, name=agent.name, came_back=came_back)
        if more_room:
            self._dispatcher.wake()
        descriptor = agent.descriptor()
        if descriptor != agent.written or now - agent.written_at >= self._settings.agent_write_interval_s:
            agent.written, agent.written_at = descriptor, now
            await self._write(agent_id, beat, agent.db_status)
        await self._reconcile(agent, now)

    async def _write(self, agent_id: str, beat: Heartbeat, status: str) -> None:
        await agent_store.upsert_agent(
            self._pool,
            id=agent_id,
            name=agent_id,
            labels=dict(beat.labels),
            executors=list(beat.executors),
            capacity=msgspec.to_builtins(beat.capacity),
            datastores=dict(beat.datastores),
            status=status,
            last_heartbeat=beat.sent_at,
        )

    async def _reconcile(self, agent: AgentState, now: float) -> None:
        """Compares what the agent runs with what the daemon thinks it runs."""
        for attempt_id in agent.reservations:
            if attempt_id < 0 or attempt_id in agent.reported:
                agent.unlisted_since.pop(attempt_id, None)
            else:
                agent.unlisted_since.setdefault(attempt_id, now)
        for attempt_id in agent.reported & agent.unlisted_since.keys():  # watched for other daemons
            del agent.unlisted_since[attempt_id]
        strays = [
            attempt_id
            for attempt_id in agent.reported
            if attempt_id not in agent.reservations
            and now - self._stray_checked.get(attempt_id, -STRAY_CHECK_INTERVAL_S) >= STRAY_CHECK_INTERVAL_S
        ]
        if not strays:
            return
        for attempt_id in strays:
            self._stray_checked[attempt_id] = now
        statuses = await attempt_store.attempt_statuses(self._pool, strays)
        written_off = [
            (attempt_id, agent.id)
            for attempt_id in strays
            if statuses.get(attempt_id) in ("lost", "cancelled", None)
        ]
        if written_off:
            log.info("stray_attempts", agent=agent.id, attempts=[item[0] for item in written_off])
            await self._cancels.send(written_off, "attempt is no longer assigned to this agent")

    async def run(self) -> None:
        """Checks for unlisted attempts several times per heartbeat timeout, and for a silent agent
        as soon as its timeout runs out (not at the next tick: a lost agent's steps move on sooner)."""
        timeout = self._settings.heartbeat_timeout_s
        interval = min(0.5, timeout / 5)
        while True:
            delay = interval
            if (due := self._registry.next_silence(timeout)) is not None:
                delay = min(delay, max(due - time.monotonic(), 0.0) + SILENCE_MARGIN_S)
            await asyncio.sleep(delay)
            await self.run_iteration()

    async def run_iteration(self) -> None:
        now = time.monotonic()
        timeout = self._settings.heartbeat_timeout_s
        for agent in self._registry.silent(now, timeout):
            await self.lose_agent(agent, f"agent {agent.name} sent no heartbeat for {timeout:g} s")
        grace = self._settings.unlisted_grace_s
        for agent in list(self._registry.all()):
            if agent.status == "lost" or not agent.seen:
                continue
            overdue = [attempt for attempt, since in agent.unlisted_since.items() if now - since > grace]
            if overdue:
                reason = (
                    f"agent {agent.name} stopped before the step finished"
                    if agent.status == "stopped"
                    else f"agent {agent.name} does not report the attempt as running"
                )
                await self._lose_attempts(agent, dict.fromkeys(overdue, reason))
        # Forget stray checks of long ago, so the map stays small.
        self._stray_checked = {
            key: when for key, when in self._stray_checked.items() if now - when < 10 * STRAY_CHECK_INTERVAL_S
        }

    async def watch_unfollowed(self) -> None:
        """Watches, as if they were this daemon's own, the attempts on live agents that have been
        active for longer than the unlisted grace and that neither this daemon holds nor their agent
        lists: another daemon placed them and died before their assignments went out (or after),
        and nothing else would ever end them. Each is lost once unlisted for the grace (its step
        placed again); one its agent lists (a late start) is left alone."""
        now = time.monotonic()
        grace = self._settings.unlisted_grace_s
        for attempt_id, agent_id in await attempt_store.active_attempts_since(self._pool, grace):
            agent = self._registry.agents.get(agent_id)
            if agent is None or agent.status == "lost" or not agent.seen:
                continue  # an agent no daemon hears is lost, with its attempts
            if attempt_id not in agent.reservations and attempt_id not in agent.reported:
                agent.unlisted_since.setdefault(attempt_id, now)

    async def lose_agent(self, agent: AgentState, reason: str) -> None:
        """The agent is gone: its active attempts are lost (their steps ready again elsewhere)."""
        async with self._pool.acquire() as conn, conn.transaction():
            ids = await attempt_store.active_attempt_ids(conn, agent.id)
            requeued = await attempt_store.lose_attempts(conn, dict.fromkeys(ids, reason))
            await agent_store.set_agent_status(conn, agent.id, "lost")
        self._registry.mark_lost(agent.id)
        for attempt_id in [*ids, *self._registry.attempts_of(agent.id)]:
            self._registry.release(attempt_id)
        log.warning("agent_lost", agent=agent.id, name=agent.name, attempts=ids, reason=reason)
        self._dispatcher.requeue(requeued)

    async def _stopped(self, agent: AgentState, now: float) -> None:
        """The agent said it stopped: it takes no more work at once. What it still held ends with the
        step events it stored before stopping (their consumption may lag this beat); what none ends
        within the unlisted grace is lost."""
        await agent_store.set_agent_status(self._pool, agent.id, "stopped")
        self._registry.stopped(agent.id)
        await self._reconcile(agent, now)
        log.info("agent_stopped", agent=agent.id, name=agent.name, attempts=sorted(agent.reservations))

    async def _lose_attempts(self, agent: AgentState, attempts: dict[int, str]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            requeued = await attempt_store.lose_attempts(conn, attempts)
        for attempt_id in attempts:
            self._registry.release(attempt_id)
            agent.unlisted_since.pop(attempt_id, None)  # one this daemon watched without holding it
        if requeued:  # an attempt that finished meanwhile was not lost: nothing to say of it
            log.warning("attempts_lost", agent=agent.id, attempts=[item.attempt_id for item in requeued])
        self._dispatcher.requeue(requeued)
