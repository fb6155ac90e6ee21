"""The one interface every trigger source implements, and the event it hands the daemon.

A source (cron, files, nats, run) watches for what its triggers name and, for each thing seen,
awaits the daemon's ``EventSink`` with a ``TriggerEvent``. The sink returns once the event and what
became of it (a run, a duplicate, a rejection) are committed; only then may the source forget the
event: ack the JetStream message, persist a cron watermark, record a file as seen. If the sink
raises, nothing was committed and the source must offer the event again later (nak, keep the
watermark) — the dedupe key makes a repeat harmless.

Sources never import the daemon: what they need from it comes in as ``TriggerConfig`` and the
callables below. They run on the daemon's event loop; blocking work (watchdog callbacks, file
stats) is bridged in with ``loop.call_soon_threadsafe`` or done in ``asyncio.to_thread``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import msgspec

from kit.objectstore import S3Location
from triggers.specs import EventSource

Outcome = Literal["run", "duplicate", "rejected", "skipped"]


class TriggerEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One thing a trigger saw.

    ``dedupe_key`` is unique per trigger for one real-world occurrence (cron: the scheduled time in
    ISO 8601 UTC; files: path + mtime + size, or the sorted list of a batch; JetStream: the stream
    sequence or ``Nats-Msg-Id``; run: the run id). ``fields`` are the source's own event fields of
    contract §3 (``scheduled_time``, ``path``, ``subject``, ``data``, ``run`` …; nested mappings for
    dotted names such as ``data.kind``); the daemon adds ``id``, ``time`` and ``trigger``.
    """

    trigger: str
    dedupe_key: str
    fields: dict[str, Any] = msgspec.field(default_factory=dict)


class EventResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the daemon made of an event, once committed. ``run_id`` is set when ``outcome`` is
    ``run`` (or ``duplicate`` of an event that made one)."""

    event_id: int
    outcome: Outcome
    run_id: str | None = None
    reason: str | None = None


EventSink = Callable[[TriggerEvent], Awaitable[EventResult]]
"""Commit an event and its outcome; raises when it could not (the source offers it again later)."""

SaveState = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Persist a trigger's source state (cron: last fire; files: what was seen), by trigger name. The
state comes back in ``TriggerConfig.state`` when the daemon starts again."""


class TriggerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One active (not paused) trigger as a source runs it.

    ``root`` is the local directory of the datastore a ``files`` trigger watches, resolved by the
    daemon; ``location`` instead, when that datastore is a bucket (type ``s3``). ``state`` is what the
    source saved last for this trigger (empty the first time).
    """

    name: str
    on: EventSource
    root: str | None = None
    location: S3Location | None = None
    state: dict[str, Any] = msgspec.field(default_factory=dict)


class Source(abc.ABC):
    """A kind of event source serving any number of triggers of that kind.

    Lifecycle: ``start`` once, then ``put``/``remove`` any number of times as Trigger documents are
    applied, paused, resumed and deleted, with no restart. Teardown is registered on the exit stack
    given to ``start``; after it, no sink call is in flight.
    """

    kind: str
    """``cron``, ``files``, ``nats`` or ``run``: the ``on:`` key this source serves."""

    @abc.abstractmethod
    async def start(self, stack: contextlib.AsyncExitStack, sink: EventSink, save_state: SaveState) -> None:
        """Acquire what the source needs (schedulers, watchers, subscriptions) and register its release
        on ``stack``. Events start flowing as triggers are ``put``."""

    @abc.abstractmethod
    async def put(self, trigger: TriggerConfig) -> None:
        """Start watching for ``trigger``, or apply its changed spec; idempotent for an unchanged one.

        Raises ``TriggerError`` when the trigger cannot be watched (a missing JetStream stream, a
        datastore directory that does not exist); the daemon records it in the trigger's status and
        keeps the others running."""

    @abc.abstractmethod
    async def remove(self, name: str) -> None:
        """Stop watching for trigger ``name`` (deleted or paused); no event of it reaches the sink after
        this returns. Unknown names are ignored."""

    async def forget(self, name: str, on: EventSource) -> None:
        """Trigger ``name`` (which watched ``on``) was deleted: stop watching, and release what a pause
        keeps (a durable consumer, say). By default the same as ``remove``."""
        await self.remove(name)

    @abc.abstractmethod
    def status(self, name: str) -> Mapping[str, Any]:
        """What an operator wants to know about trigger ``name`` now, as JSON-able values (cron:
        ``next_fire``; files: ``watch`` mode in use, ``pending`` files settling; nats: ``consumer_lag``;
        any: ``error`` when the source could not watch). Empty for unknown names."""


class TriggerError(Exception):
    """A trigger that its source cannot watch; the message names the trigger and says why."""
