"""The scheduling side of the daemon, started and stopped as one: dispatcher, step events, agent
supervision and the safety sweep, over state rebuilt from the database at start; and, while this
daemon leads (:mod:`daemon.runtime.leader`), the trigger sources.

``Scheduler.start(exit_stack, …)`` registers its own teardown on the stack: loops stop, subscriptions
end and assignments in flight are cancelled (their attempts stay ``dispatched`` in the database and are
re-adopted, or lost, by the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from nats.aio.client import Client as NATS

from daemon.config import DispatchSettings
from daemon.dispatch.agent_monitor import AgentMonitor
from daemon.dispatch.announce import Announcer
from daemon.dispatch.cancel import Cancels
from daemon.dispatch.dispatcher import Dispatcher
from daemon.dispatch.effects import Aftermath
from daemon.dispatch.registry import AgentState, Registry
from daemon.dispatch.step_events import StepEvents
from daemon.dispatch.transitions import Transitions
from daemon.intake.backfills import BackfillWorker
from daemon.intake.events import Ingest
from daemon.intake.manual import Created, ManualRuns
from daemon.intake.submit import Submissions
from daemon.intake.trigger_sources import Triggering, applied_changes
from daemon.metrics import SCHEDULER
from daemon.metrics.runs import RunCounts
from daemon.planning.contexts import Datastores, RunContexts, Specs
from daemon.planning.creation import RunCreation
from daemon.planning.data_fingerprints import DataFingerprints
from daemon.planning.preview import Planner
from daemon.planning.reuse_planner import ReusePlanner
from daemon.planning.store_fingerprints import StoreFingerprints
from daemon.rules.placement import Need
from daemon.runtime import leader
from daemon.runtime.leader import Election
from daemon.runtime.tasks import Supervisor
from daemon.store import attempts as attempt_store
from daemon.store import runs as run_store
from daemon.store import triggering as trigger_store

log = structlog.get_logger(__name__)


class Scheduler:
    """Makes the scheduling parts, each given what it needs, and starts and stops them as one."""

    def __init__(
        self, *, pool: asyncpg.Pool, nc: NATS, settings: DispatchSettings, replicas: int | None = None
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.specs = Specs()
        self.contexts = RunContexts(self.specs)
        self.datastores = Datastores()
        self.announcer = Announcer(nc)
        self.registry = Registry()
        self.dispatcher = Dispatcher(
            pool=pool,
            nc=nc,
            registry=self.registry,
            contexts=self.contexts,
            datastores=self.datastores,
            announcer=self.announcer,
            settings=settings,
        )
        self.objects = StoreFingerprints()
        """The daemon's stores of s3 datastores, each opened once: fingerprints and logs share them."""
        self.reuse = ReusePlanner(self.datastores, DataFingerprints(), self.objects)
        self.creation = RunCreation(
            reuse=self.reuse,
            dispatcher=self.dispatcher,
            contexts=self.contexts,
            announcer=self.announcer,
            counts=RunCounts(pool),
            params_max_bytes=settings.params_max_bytes,
        )
        self.transitions = Transitions(
            pool=pool,
            contexts=self.contexts,
            datastores=self.datastores,
            creation=self.creation,
            aftermath=Aftermath(self.registry, self.dispatcher, self.contexts, self.announcer, self.creation),
            retry_backoff_s=settings.retry_backoff_s,
        )
        self.dispatcher.on_hopeless = self.transitions.fail_step
        self.cancels = Cancels(pool=pool, nc=nc, specs=self.specs, transitions=self.transitions)
        self.manual = ManualRuns(pool=pool, creation=self.creation)
        self.planner = Planner(
            pool=pool,
            creation=self.creation,
            manual=self.manual,
            dispatcher=self.dispatcher,
            registry=self.registry,
            datastores=self.datastores,
        )
        self.monitor = AgentMonitor(
            pool=pool,
            nc=nc,
            registry=self.registry,
            dispatcher=self.dispatcher,
            cancels=self.cancels,
            settings=settings,
        )
        self.step_events = StepEvents(
            pool=pool, nc=nc, transitions=self.transitions, cancels=self.cancels, replicas=replicas
        )
        self.supervisor = Supervisor()
        self.triggering: Triggering | None = None
        """The trigger sources, while this daemon leads; None while it stands by."""
        self.backfills: BackfillWorker | None = None
        """The backfill worker, while this daemon leads."""
        self.election: Election | None = None
        self.submissions: Submissions | None = None
        self._nc = nc

    @classmethod
    async def start(
        cls,
        stack: contextlib.AsyncExitStack,
        *,
        pool: asyncpg.Pool,
        nc: NATS,
        settings: DispatchSettings,
        database_url: str | None = None,
        replicas: int | None = None,
    ) -> Scheduler:
        """Rebuilds memory from the database, binds the subscriptions and starts the loops.

        With ``database_url`` the trigger sources run only while this scheduler wins the leader
        election among the daemons on that database (a lone daemon wins before this returns);
        without it, this scheduler is alone and runs them unconditionally. The step events' stream
        and consumer keep ``replicas`` copies.

        Raises ``Unavailable`` when JetStream refuses the stream or the consumer.
        """
        started = time.monotonic()
        scheduler = cls(pool=pool, nc=nc, settings=settings, replicas=replicas)
        dispatcher, registry = scheduler.dispatcher, scheduler.registry
        stack.push_async_callback(scheduler._stop)
        stack.callback(SCHEDULER.watch(scheduler))
        await scheduler.datastores.refresh(pool)
        await scheduler.creation.counts.prime()
        await scheduler.monitor.load(started)
        await scheduler._adopt_attempts(started)
        await dispatcher.sweep()
        await scheduler.step_events.start()
        await scheduler.monitor.start()
        scheduler.supervisor.start("dispatcher", dispatcher.run)
        scheduler.supervisor.start("step-events", scheduler.step_events.run)
        scheduler.supervisor.start("agent-monitor", scheduler.monitor.run)
        scheduler.supervisor.start("sweep", scheduler._sweep_loop)
        # After the dispatcher, on the same stack: triggers and submissions stop before it does.
        if database_url is None:
            await scheduler._lead(stack, None)
        else:
            scheduler.election = await Election.start(
                stack,
                database_url,
                name=leader.TRIGGERS,
                interval=settings.leader_retry_s,
                lead=scheduler._lead,
            )
        # Every daemon answers submissions: they share a queue group, so each request is answered once.
        scheduler.submissions = await Submissions.start(stack, nc, scheduler.manual)
        log.info("scheduler_started", ready=len(dispatcher), agents=len(registry.agents))
        return scheduler

    async def _lead(self, term: contextlib.AsyncExitStack, session: asyncpg.Connection | None) -> None:
        """One term as the leader: the trigger sources run until ``term`` closes. Standby daemons'
        APIs NOTIFY on the election's ``session``, which lives exactly as long as the term."""
        sink = Ingest(pool=self.pool, creation=self.creation)
        triggering = await Triggering.start(
            term, pool=self.pool, nc=self._nc, datastores=self.datastores, sink=sink
        )
        if session is not None:

            def changed(_conn: object, _pid: int, _channel: str, payload: str) -> None:
                triggering.wake(datastores=payload == "datastores")

            await session.add_listener(trigger_store.CHANGES_CHANNEL, changed)
        self.triggering = triggering
        # After the sources, on the same term: it stops first, and feeds the sources' sink.
        self.backfills = await BackfillWorker.start(
            term, pool=self.pool, sink=sink, datastores=self.datastores
        )
        # Closes first: the API stops handing changes to sources that are going down.
        term.callback(self._stand_by)

    def _stand_by(self) -> None:
        self.triggering = None
        self.backfills = None

    async def _adopt_attempts(self, started: float) -> None:
        """Active attempts hold their agent's capacity again; their agents have until the heartbeat
        timeout (from now) to show up and list them."""
        registry = self.registry
        for attempt in await attempt_store.active_attempts(self.pool):
            if attempt.agent_id is None:
                continue
            if attempt.agent_id not in registry.agents:
                registry.known(AgentState(id=attempt.agent_id, name=attempt.agent_id, last_seen=started))
            need = need_of_resources(attempt.resources or {})
            registry.reserve(attempt.agent_id, attempt.id, need, attempt.gpus, started)

    async def _stop(self) -> None:
        await self.monitor.stop()
        await self.step_events.stop()
        await self.supervisor.aclose()
        await self.dispatcher.aclose()
        log.info("scheduler_stopped")

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            # Datastores change rarely (apply); re-reading them here keeps rendering current.
            await self.datastores.refresh(self.pool)
            await self.dispatcher.sweep()
            await self.transitions.admit_held_runs()
            await self.monitor.watch_unfollowed()

    # --- operations the API offers ------------------------------------------------------------------

    async def create_run(self, pipeline: str, **options: Any) -> Created:
        return await self.manual.create(pipeline, **options)

    async def cancel_run(self, run_id: UUID) -> run_store.RunRecord:
        return await self.cancels.cancel_run(run_id)

    async def agent_revoked(self, agent_id: str) -> None:
        """Agent ``agent_id``'s credentials were revoked: NATS cuts it off, and what it ran is lost
        now (run again elsewhere) rather than after its heartbeat timeout."""
        agent = self.registry.agents.get(agent_id) or AgentState(id=agent_id, name=agent_id)
        await self.monitor.lose_agent(agent, f"agent {agent_id}'s NATS credentials were revoked")

    async def triggers_applied(self, items: Iterable[Any]) -> None:
        """After an apply committed (``daemon.apply.Applied`` items): the leader's sources follow it,
        here at once, or, on a standby daemon, when the leader is told."""
        await self.creation.counts.prime()  # new pipelines and triggers: their series exist at 0
        if (triggering := self.triggering) is not None:
            await triggering.applied(items)
            return
        names, datastores = applied_changes(items)
        if names or datastores:
            await self._tell_leader(datastores=datastores)

    async def trigger_changed(self, name: str) -> None:
        """After trigger ``name`` was paused, resumed or deleted (committed): as :meth:`triggers_applied`."""
        if (triggering := self.triggering) is not None:
            await triggering.sync([name])
        else:
            await self._tell_leader(datastores=False)

    async def _tell_leader(self, *, datastores: bool) -> None:
        # A hint: the change is committed, and the leader's reconcile finds it without being told.
        try:
            await trigger_store.notify_changed(self.pool, datastores=datastores)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("leader_notify_failed", error=str(exc) or type(exc).__name__)

    def trigger_status(self, name: str) -> dict[str, Any]:
        """What the trigger's source says about it (on the leader), or that this daemon stands by and
        which daemon leads (``host:pid``; None when not known yet)."""
        if (triggering := self.triggering) is not None:
            return triggering.status(name)
        return {"standby": True, "leader": None if self.election is None else self.election.leader}

    def waiting_reasons(self) -> dict[int, str | None]:
        return self.dispatcher.waiting()

    # --- what /metrics reads at scrape time (daemon.metrics.scrape) ----------------------------------

    def waiting_since(self) -> Iterable[float]:
        return self.dispatcher.waiting_since()

    def agent_states(self) -> Iterable[AgentState]:
        return self.registry.agents.values()

    def jetstream_pending(self) -> Mapping[str, int]:
        triggering = self.triggering
        return {} if triggering is None else triggering.jetstream_pending()


def need_of_resources(resources: Mapping[str, Any]) -> Need:
    """A stored attempt's resources as a placement need (only the amounts matter for accounting)."""
    return Need(cpu=float(resources.get("cpu", 0.0)), memory=int(resources.get("memory", 0)))
