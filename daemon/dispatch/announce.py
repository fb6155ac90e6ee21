"""After-commit announcements of state changes: run changes on ``sluice.runs.<pipeline>.<status>``
(contract §5) and both run and step changes to in-process listeners (``GET /events``).

Announcements are hints for followers, sent only after the change committed; the database stays the
truth (a follower that misses one reads the run again).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import structlog
from nats.aio.client import Client as NATS

from daemon.store.runs import RunRecord
from kit.subjects import run_subject

log = structlog.get_logger(__name__)

PUBLISHED_RUN_STATUSES = frozenset({"running", "succeeded", "failed", "cancelled"})
LISTENER_QUEUE = 10_000
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Change:
    """One state change as ``GET /events`` sends it: ``event: run`` or ``event: step``."""

    kind: Literal["run", "step"]
    run_id: str
    data: dict[str, Any]


class Listener:
    """A bounded queue of changes for one follower; a follower too slow to keep up is cut off
    (``overflowed``) rather than slowing the daemon down."""

    def __init__(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.queue: asyncio.Queue[Change] = asyncio.Queue(LISTENER_QUEUE)
        self.overflowed = False

    def offer(self, change: Change) -> None:
        if self.run_id is not None and change.run_id != self.run_id:
            return
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.overflowed = True


class Announcer:
    def __init__(self, nc: NATS | None) -> None:
        self._nc = nc
        self._listeners: set[Listener] = set()

    def listen(self, run_id: str | None = None) -> Listener:
        listener = Listener(run_id)
        self._listeners.add(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    async def run_changed(self, run: RunRecord) -> None:
        """Publishes the run's new status (running and final ones on NATS, all to listeners)."""
        summary = run.summary()
        if self._nc is not None and run.status in PUBLISHED_RUN_STATUSES:
            try:
                await self._nc.publish(run_subject(run.pipeline, run.status), _encoder.encode(summary))
            except Exception as exc:  # a NATS hiccup must not undo a committed change
                log.warning("run_announce_failed", run_id=summary["id"], error=repr(exc))
        self._offer(Change("run", summary["id"], summary))

    def step_changed(
        self,
        run_id: Any,
        name: str,
        status: str,
        *,
        attempt: int | None = None,
        agent: str | None = None,
        waiting_reason: str | None = None,
    ) -> None:
        if not self._listeners:
            return
        run_id = str(run_id)
        self._offer(
            Change(
                "step",
                run_id,
                {
                    "run_id": run_id,
                    "name": name,
                    "status": status,
                    "attempt": attempt,
                    "agent": agent,
                    "waiting_reason": waiting_reason,
                },
            )
        )

    def _offer(self, change: Change) -> None:
        for listener in list(self._listeners):
            listener.offer(change)
