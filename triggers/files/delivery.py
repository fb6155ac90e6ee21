"""Delivering a files trigger's settled files to the sink: the event each file (or batch) makes, and
the workers that offer them. Files are sharded by path over the workers so that one path's events
stay in order (a batching trigger has one worker); a failing sink is retried with capped backoff
until it commits, and then the items are accounted for.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from typing import Any

import structlog

from kit.offer import offer_until_committed
from triggers.base import EventSink, TriggerEvent
from triggers.files.accounts import Accounts
from triggers.files.settle import Settled, Signature, batch_key

log = structlog.get_logger(__name__)

WORKERS = 8


def files_event(trigger: str, datastore: str, items: list[Settled], *, batched: bool) -> TriggerEvent:
    """The event of one settled file, or of a batch of them (``kind`` ``mixed`` when they differ)."""
    if not batched:
        item = items[0]
        fields: dict[str, Any] = {"datastore": datastore, "path": item.path, "paths": [item.path]}
        fields["kind"] = item.kind
        if item.moved_from is not None:
            fields["moved_from"] = item.moved_from
        return TriggerEvent(trigger=trigger, dedupe_key=item.dedupe_key, fields=fields)
    paths = [item.path for item in items]
    kinds = {item.kind for item in items}
    fields = {
        "datastore": datastore,
        "path": paths[0],
        "paths": paths,
        "kind": kinds.pop() if len(kinds) == 1 else "mixed",
        "kinds": {item.path: item.kind for item in items},
    }
    return TriggerEvent(trigger=trigger, dedupe_key=batch_key(items), fields=fields)


def first_seen_event(
    trigger: str, datastore: str, files: Sequence[tuple[str, Signature]], *, batched: bool
) -> TriggerEvent:
    """The event the live source makes of files it sees for the first time (``created``): what a
    backfill replays and a trigger test stands for, with the live dedupe key."""
    return files_event(
        trigger, datastore, [Settled(path, "created", sig) for path, sig in files], batched=batched
    )


class Delivery:
    """The delivery queues of one trigger; :meth:`worker` runs once per queue (``queues``)."""

    def __init__(
        self,
        trigger: str,
        datastore: str,
        *,
        batched: bool,
        accounts: Accounts,
        sink: EventSink,
        retry_base: float,
        retry_cap: float,
    ) -> None:
        self._trigger = trigger
        self._datastore = datastore
        self._batched = batched
        self._accounts = accounts
        self._sink = sink
        self._retry = (retry_base, retry_cap)
        self.queues: list[asyncio.Queue[list[Settled]]] = [
            asyncio.Queue() for _ in range(1 if batched else WORKERS)
        ]
        self.delivering = 0
        """Items enqueued and not yet committed."""

    def enqueue(self, items: list[Settled]) -> None:
        self._accounts.delivering(items)
        self.delivering += len(items)
        shard = zlib.crc32(items[0].path.encode()) % len(self.queues)
        self.queues[shard].put_nowait(items)

    def drop(self) -> None:
        """Forget every queued item (the trigger restarts; a rescan finds them again)."""
        for queue in self.queues:
            while not queue.empty():
                queue.get_nowait()
        self._accounts.forget_deliveries()
        self.delivering = 0

    async def worker(self, queue: asyncio.Queue[list[Settled]]) -> None:
        sink = self._sink
        base, cap = self._retry
        while True:
            items = await queue.get()
            event = files_event(self._trigger, self._datastore, items, batched=self._batched)
            result = await offer_until_committed(
                lambda event=event: sink(event),
                failed="files_sink_failed",
                base=base,
                cap=cap,
                trigger=self._trigger,
                path=items[0].path,
            )
            assert result is not None  # never closed: cancelled with the trigger instead
            log.debug(
                "files_event_committed",
                trigger=self._trigger,
                path=items[0].path,
                files=len(items),
                outcome=result.outcome,
                run_id=result.run_id,
            )
            self.delivering -= len(items)
            self._accounts.account(items, delivered=True)
