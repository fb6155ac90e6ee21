"""The ``run`` source: a run of pipeline A that ended with one of the listed statuses is an event for
each trigger watching A (contract §3: ``on: {run: {pipeline, status}}``).

The dedupe key is the run id; the fields are ``{"run": {"id", "pipeline", "version", "status",
"params", "finished_at"}}``.

Live, the source follows the daemon's announcements on ``sluice.runs.<pipeline>.<status>`` (core NATS:
every daemon publishes there, so it also sees runs cancelled through another daemon's API). Those are
hints: the database is the truth. On ``put`` and then every ``sweep_interval`` seconds, each trigger
catches up through ``finished_since`` on runs that ended after its watermark and that it has no event
for yet — runs that ended while the daemon was down, announcements lost to a full queue, or a sink
call that failed. The unique dedupe key makes any overlap harmless.

State per trigger: ``since`` (when the trigger was first put: runs that ended before it do not count)
and ``finished_after`` (the latest end seen; the catch-up looks back ``SLACK`` before it, as runs
commit a little out of the order of their end times).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS

from kit.subjects import run_subject
from triggers.base import EventSink, SaveState, Source, TriggerConfig, TriggerError, TriggerEvent
from triggers.specs import RunSource as RunSpec

log = structlog.get_logger(__name__)

FinishedSince = Callable[[str, str, Sequence[str], datetime], Awaitable[Sequence[Mapping[str, Any]]]]
"""``finished_since(trigger, pipeline, statuses, after)``: runs of ``pipeline`` that ended with one of
``statuses`` after ``after`` and that ``trigger`` has no event for yet, oldest end first, each as the
announcements carry it (``id``, ``pipeline``, ``version``, ``status``, ``params``, ``finished_at``);
a bounded batch (the source asks again while batches come back full)."""

SLACK = timedelta(minutes=5)
SWEEP_INTERVAL_S = 30.0
SAVE_INTERVAL_S = 5.0
QUEUE_SIZE = 10_000
CATCH_UP_BATCH = 500
STOP_TIMEOUT_S = 5.0
RUN_FIELDS = ("id", "pipeline", "version", "status", "params", "finished_at")


def run_event(trigger: str, run: Mapping[str, Any]) -> TriggerEvent:
    """The event a finished run is for ``trigger``."""
    return TriggerEvent(
        trigger=trigger,
        dedupe_key=str(run["id"]),
        fields={"run": {key: run.get(key) for key in RUN_FIELDS}},
    )


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value)
    return None


@dataclass
class _Watch:
    name: str
    spec: RunSpec
    since: datetime
    finished_after: datetime | None
    subscriptions: list[Any] = field(default_factory=list)
    saved: tuple[datetime, datetime | None] | None = None
    error: str | None = None
    events: int = 0

    @property
    def subjects(self) -> list[str]:
        return [run_subject(self.spec.pipeline, status) for status in self.spec.status]

    def catch_up_after(self) -> datetime:
        if self.finished_after is None:
            return self.since
        return max(self.since, self.finished_after - SLACK)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"since": self.since.isoformat()}
        if self.finished_after is not None:
            state["finished_after"] = self.finished_after.isoformat()
        return state


class RunStatusSource(Source):
    """Triggers on runs that ended; see the module docstring."""

    kind = "run"

    def __init__(
        self,
        nc: NATS,
        finished_since: FinishedSince,
        *,
        sweep_interval: float = SWEEP_INTERVAL_S,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self._nc = nc
        self._finished_since = finished_since
        self._sweep_interval = sweep_interval
        self._queue: asyncio.Queue[tuple[str, Mapping[str, Any] | None]] = asyncio.Queue(queue_size)
        self._watches: dict[str, _Watch] = {}
        self._sink: EventSink | None = None
        self._save_state: SaveState | None = None
        self._tasks: list[asyncio.Task] = []
        self._catching_up: set[str] = set()
        self._last_save = 0.0

    async def start(self, stack: contextlib.AsyncExitStack, sink: EventSink, save_state: SaveState) -> None:
        self._sink, self._save_state = sink, save_state
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._work(), name="run-source-worker"),
            loop.create_task(self._sweep(), name="run-source-sweep"),
        ]
        stack.push_async_callback(self._stop)

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
        for watch in list(self._watches.values()):
            await self._unsubscribe(watch)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._save_all(force=True), STOP_TIMEOUT_S)

    async def put(self, trigger: TriggerConfig) -> None:
        spec = trigger.on
        if not isinstance(spec, RunSpec):
            raise TriggerError(f"trigger {trigger.name}: the run source cannot watch a {type(spec).__name__}")
        watch = self._watches.get(trigger.name)
        if watch is not None and watch.spec == spec and watch.error is None:
            return
        if watch is not None:
            await self._unsubscribe(watch)
        else:
            since = _parse_time(trigger.state.get("since"))
            watch = _Watch(
                name=trigger.name,
                spec=spec,
                since=since or datetime.now(UTC),
                finished_after=_parse_time(trigger.state.get("finished_after")),
            )
            if since is None:  # the first time: remember from when runs count
                await self._save(watch)
        watch.spec, watch.error = spec, None
        self._watches[trigger.name] = watch
        try:
            for subject in watch.subjects:
                watch.subscriptions.append(await self._nc.subscribe(subject, cb=self._receiver(trigger.name)))
        except Exception as exc:
            watch.error = f"cannot subscribe to {', '.join(watch.subjects)}: {exc}"
            await self._unsubscribe(watch)
            raise TriggerError(f"trigger {trigger.name}: {watch.error}") from exc
        self._offer(trigger.name, None)  # catch up on what ended while nobody watched

    async def remove(self, name: str) -> None:
        watch = self._watches.pop(name, None)
        if watch is None:
            return
        await self._unsubscribe(watch)
        await self._save(watch)

    def status(self, name: str) -> Mapping[str, Any]:
        watch = self._watches.get(name)
        if watch is None:
            return {}
        status: dict[str, Any] = {
            "subjects": watch.subjects,
            "finished_after": None if watch.finished_after is None else watch.finished_after.isoformat(),
            "events": watch.events,
        }
        if watch.error is not None:
            status["error"] = watch.error
        return status

    # --- internals ----------------------------------------------------------------------------------

    async def _unsubscribe(self, watch: _Watch) -> None:
        for subscription in watch.subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        watch.subscriptions.clear()

    def _receiver(self, name: str) -> Callable[[Any], Awaitable[None]]:
        async def receive(msg: Any) -> None:
            try:
                run = msgspec.json.decode(msg.data)
            except msgspec.DecodeError:
                log.warning("run_announcement_unreadable", trigger=name, subject=msg.subject)
                return
            if isinstance(run, dict) and "id" in run:
                self._offer(name, run)

        return receive

    def _offer(self, name: str, run: Mapping[str, Any] | None) -> None:
        """Queues a run for ``name`` (None: a catch-up). A full queue drops it: the sweep finds it."""
        if run is None:
            if name in self._catching_up:
                return
            self._catching_up.add(name)
        try:
            self._queue.put_nowait((name, run))
        except asyncio.QueueFull:
            self._catching_up.discard(name)
            log.warning("run_source_queue_full", trigger=name)

    async def _work(self) -> None:
        while True:
            name, run = await self._queue.get()
            try:
                if run is None:
                    self._catching_up.discard(name)
                    await self._catch_up(name)
                else:
                    await self._deliver(name, run)
                await self._save_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("run_source_failed", trigger=name)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            for name in list(self._watches):
                self._offer(name, None)

    async def _deliver(self, name: str, run: Mapping[str, Any]) -> bool:
        """Hands one run to the sink; False when it could not (the next sweep offers it again)."""
        watch = self._watches.get(name)
        if (
            watch is None
            or run.get("pipeline") != watch.spec.pipeline
            or run.get("status") not in watch.spec.status
        ):
            return True
        finished = _parse_time(run.get("finished_at"))
        if finished is not None and finished <= watch.since:
            return True
        assert self._sink is not None
        try:
            result = await self._sink(run_event(name, run))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("run_event_not_recorded", trigger=name, run_id=str(run.get("id")), error=str(exc))
            return False
        watch.events += 1
        if finished is not None and (watch.finished_after is None or finished > watch.finished_after):
            watch.finished_after = finished
        log.debug("run_event", trigger=name, run_id=str(run.get("id")), outcome=result.outcome)
        return True

    async def _catch_up(self, name: str) -> None:
        while (watch := self._watches.get(name)) is not None:
            runs = await self._finished_since(
                name, watch.spec.pipeline, list(watch.spec.status), watch.catch_up_after()
            )
            for run in runs:
                if not await self._deliver(name, run):
                    return
            if len(runs) < CATCH_UP_BATCH:
                return

    async def _save_all(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_save < SAVE_INTERVAL_S:
            return
        self._last_save = time.monotonic()
        for watch in list(self._watches.values()):
            await self._save(watch)

    async def _save(self, watch: _Watch) -> None:
        current = (watch.since, watch.finished_after)
        if current == watch.saved:
            return
        assert self._save_state is not None
        try:
            await self._save_state(watch.name, watch.state())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a later save catches up; the catch-up covers the gap meanwhile
            log.warning("run_source_state_not_saved", trigger=watch.name, error=str(exc))
            return
        watch.saved = current
