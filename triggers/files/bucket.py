"""One files trigger on a bucket (an ``s3`` datastore) at run time.

Objects can arrive under any key, so no single position in the key order finds them all. The
trigger keeps what it has accounted for (key -> ETag and size, its saved state) and looks in three
ways, all feeding the same settling:

- a **full listing** of the pattern's fixed prefix at start (so objects that came while no daemon
  ran are found, and only they fire) and every ``rescan_interval``: ceil(n / 1000) LIST requests
  for n objects under that prefix; it finds every new, rewritten and deleted object;
- an **incremental listing** every ``poll_interval`` in between, from the greatest key seen (S3's
  ``start-after``): one LIST request (and one more per 1,000 new keys); it finds new keys that sort
  after every key seen, which is how dated or sequenced names arrive;
- **notifications** (S3 events on NATS), when the trigger names a subject: the object is read
  (HEAD) at once.

An object settles when a fresh read, ``settle`` seconds after it was last seen to change, finds the
same ETag and size: a HEAD per object, or one listing over the range of keys due when that is
cheaper. Its dedupe key is ``key:ETag``, however it was seen.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

import obstore
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import S3Store

from kit.backoff import Backoff
from kit.objectstore import S3Location, reason_of
from triggers.base import TriggerConfig, TriggerError
from triggers.files.accounts import dump_objects
from triggers.files.matching import Matcher, literal_prefix
from triggers.files.notifications import NotificationError, e_tag, notified
from triggers.files.settle import AnySignature, ObjectSignature
from triggers.files.settling import UNREAD, SettlingTrigger
from triggers.specs import FilesSource as FilesSpec

if TYPE_CHECKING:
    from triggers.files.source import FilesSource

log = structlog.get_logger(__name__)

PAGE = 1000
"""Keys per LIST request (S3's most)."""
HEADS_MAX = 100
"""Up to this many due objects are read with a HEAD each; more, with a listing over their range."""
HEAD_CONCURRENCY = 16
HINT_WORKERS = 4
HINTS_MAX = 10_000
"""Notified objects waiting for their HEAD; beyond, notifications are dropped (the polls find them)."""

StoreErrors = (ObstoreError, OSError)


def object_signature(meta: Any) -> ObjectSignature:
    """The signature of a listed or HEAD'ed object (``obstore.ObjectMeta``)."""
    return ObjectSignature(e_tag(meta["e_tag"]), meta["size"])


def store_problem(location: S3Location, exc: BaseException) -> str:
    """One line about a store error for the trigger's status (obstore's own text goes on with a
    debug dump of the request: it holds URLs and status codes, never credentials)."""
    return f"bucket {location.bucket}: {reason_of(exc)}"


class BucketTrigger(SettlingTrigger):
    """One files trigger on a bucket at run time."""

    def __init__(
        self,
        source: FilesSource,
        config: TriggerConfig,
        spec: FilesSpec,
        location: S3Location,
        store: S3Store,
        seen: dict[str, AnySignature],
    ) -> None:
        super().__init__(source, config, spec, seen)
        self.location = location
        self.store = store
        self.matcher = Matcher("", spec.pattern)
        self.list_prefix = literal_prefix(spec.pattern) or None
        self.after: str | None = None
        """The greatest key the last listing returned: where the next incremental one starts."""
        self.requests = 0
        """LIST and HEAD requests made (figures for operators and benchmarks)."""
        self._hints: asyncio.Queue[str] = asyncio.Queue()
        self._hinted: set[str] = set()
        self._subscription: Subscription | None = None
        self._heads = asyncio.Semaphore(HEAD_CONCURRENCY)

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Subscribe to the trigger's notifications (when it names a subject) and start its loops.
        Raises ``TriggerError``."""
        notifications = self.spec.notifications
        if notifications is not None:
            if (nc := self._source.nc) is None:
                raise TriggerError(f"trigger {self.name}: notifications need NATS, and this source has none")
            self._subscription = await nc.subscribe(notifications.subject, cb=self._notified)
        log.info(
            "files_trigger_watching",
            trigger=self.name,
            bucket=self.location.bucket,
            prefix=self.location.prefix,
            watch="s3",
            notifications=notifications.subject if notifications else None,
        )
        self._start_loops()

    async def close(self) -> None:
        self.closed = True
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        await self._stop_loops()

    def same_target(self, config: TriggerConfig) -> bool:
        return config.location == self.location

    def status(self) -> dict[str, Any]:
        notifications = self.spec.notifications
        return {
            "watch": "s3",
            "pending": self.pending,
            "error": self.error,
            "objects": len(self.accounts.seen),
            "notifications": notifications.subject if notifications else None,
        }

    def _finders(self) -> list[Coroutine[Any, Any, None]]:
        return [self._poll_loop(), *(self._hint_worker() for _ in range(HINT_WORKERS))]

    def _dump_state(self) -> dict[str, Any]:
        return dump_objects(self.accounts.seen)

    # -- listings -------------------------------------------------------------------------------

    async def _listing(self, offset: str | None) -> AsyncIterator[tuple[str, ObjectSignature]]:
        """Every key under the pattern's prefix after ``offset``, in key order, with its signature."""
        pages = obstore.list(self.store, self.list_prefix, offset=offset, chunk_size=PAGE)
        self.requests += 1
        listed = 0
        async for chunk in pages:
            for meta in chunk:
                listed += 1
                if listed > PAGE:  # obstore asked for the next page
                    self.requests += 1
                    listed = 1
                yield meta["path"], object_signature(meta)

    async def full_poll(self) -> None:
        """List every object under the pattern's prefix: new, rewritten and gone ones are sighted."""
        found: dict[str, ObjectSignature] = {}
        greatest = None
        async for key, sig in self._listing(None):
            greatest = key
            if self.matcher.matches(key):
                found[key] = sig
        self._found_all(found)
        self.after = greatest
        log.info("files_bucket_listed", trigger=self.name, objects=len(found), pending=len(self.settler))

    async def incremental_poll(self) -> None:
        """List the keys after the greatest one seen: new objects with keys that sort last."""
        now = self._loop.time()
        async for key, sig in self._listing(self.after):
            self.after = key
            if self.matcher.matches(key):
                self._sighting(key, sig, now)
        self._wake.set()

    async def _poll_loop(self) -> None:
        source = self._source
        delays = Backoff(source.restart_base, source.restart_cap)
        next_full = self._loop.time()
        while True:
            full = self._loop.time() >= next_full
            try:
                await (self.full_poll() if full else self.incremental_poll())
            except StoreErrors as exc:
                problem = store_problem(self.location, exc)
                if problem != self.error:
                    log.warning("files_bucket_unreadable", trigger=self.name, error=problem)
                self.error = problem
                await asyncio.sleep(delays.next())
                continue
            self.error = None
            delays.reset()
            if full:
                next_full = self._loop.time() + source.rescan_interval
            await asyncio.sleep(self.spec.poll_interval)

    # -- reading objects ------------------------------------------------------------------------

    async def _head(self, key: str) -> ObjectSignature | str | None:
        async with self._heads:
            self.requests += 1
            try:
                return object_signature(await obstore.head_async(self.store, key))
            except FileNotFoundError:
                return None
            except StoreErrors as exc:
                self.error = store_problem(self.location, exc)
                return UNREAD

    async def _signatures(self, paths: list[str]) -> list[AnySignature | str | None]:
        if len(paths) <= HEADS_MAX:
            return list(await asyncio.gather(*(self._head(key) for key in paths)))
        low, high = min(paths), max(paths)
        found: dict[str, ObjectSignature] = {}
        try:
            # Keys after low[:-1] include low; the listing stops past the greatest key due.
            async with contextlib.aclosing(self._listing(low[:-1] or None)) as listing:
                async for key, sig in listing:
                    if key > high:
                        break
                    found[key] = sig
        except StoreErrors as exc:
            self.error = store_problem(self.location, exc)
            return [UNREAD] * len(paths)
        return [found.get(key) for key in paths]

    # -- notifications --------------------------------------------------------------------------

    async def _notified(self, msg: Msg) -> None:
        """A message on the notifications subject (on the NATS client's task): the objects it names
        that may be news are queued for a HEAD."""
        if self.closed:
            return
        try:
            objects = notified(msg.data, self.location)
        except NotificationError as exc:
            log.debug("files_notification_ignored", trigger=self.name, subject=msg.subject, error=str(exc))
            return
        for item in objects:
            key = item.key
            if key in self._hinted or not self.matcher.matches(key):
                continue
            settling = key in self.settler
            known = self.accounts.known(key)
            unchanged = (item.removed and known is None) or (item.claimed and item.claimed == known)
            if unchanged and not settling:
                continue  # nothing new: seen already, however it was seen
            if len(self._hinted) >= HINTS_MAX:
                log.warning("files_notifications_dropped", trigger=self.name, waiting=len(self._hinted))
                return
            self._hinted.add(key)
            self._hints.put_nowait(key)

    async def _hint_worker(self) -> None:
        while True:
            key = await self._hints.get()
            self._hinted.discard(key)
            sig = await self._head(key)
            if sig != UNREAD:
                self._sighting(key, sig, self._loop.time())
                self._wake.set()
