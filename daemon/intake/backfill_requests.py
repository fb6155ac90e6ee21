"""Asking for a backfill: the request checked against the trigger as the store has it, its events
counted, and its record written (the worker on the leading daemon takes it from there).

Refused, each with the field at fault: a trigger that does not exist (404) or whose source has no
history to replay (``nats``, ``run``: 422), a paused trigger (409: its events would be recorded
``skipped`` and their keys used up), a version that does not exist (404) or is disabled (409), times
that do not parse, an empty range and one of more than ``MAX_EVENTS`` events (422).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from daemon.errors import Conflict, Invalid, NotFound
from daemon.planning.sample_events import S3_FILES_NOT_YET
from daemon.rules import backfills as rules
from daemon.rules.instants import parse_instant
from daemon.store import backfills as backfill_store
from daemon.store.catalog import get_datastore, get_trigger
from daemon.store.pipelines import get_version
from triggers.cronplan import Schedule
from triggers.files.matching import Matcher
from triggers.files.watch import scan
from triggers.specs import CronSource, EventSource, FilesSource


class BackfillRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of ``POST /triggers/{name}/backfills``: times as ISO 8601 (an offset, or the trigger's
    time zone without one) or dates (midnight in the trigger's time zone)."""

    start: str = msgspec.field(name="from")
    end: str = msgspec.field(name="to")
    version: int | None = None
    max_active: int | None = None


async def create_backfill(
    pool: asyncpg.Pool, trigger: str, request: BackfillRequest
) -> backfill_store.BackfillRecord:
    """Checks ``request`` and writes the backfill (``running``, nothing offered yet)."""
    async with pool.acquire() as conn:
        record = await get_trigger(conn, trigger)
        if record is None:
            raise NotFound(f"trigger {trigger} does not exist")
        if record.source not in rules.REPLAYABLE:
            raise Invalid(
                f"trigger: {trigger} is a {record.source} trigger, which has no history to replay "
                f"(backfills replay {' and '.join(rules.REPLAYABLE)} triggers)"
            )
        if record.paused:
            raise Conflict(f"trigger: {trigger} is paused; resume it before backfilling it")
        pin = request.version if request.version is not None else record.version
        version = await get_version(conn, record.pipeline, pin)
        if version is None:
            which = f"version {pin}" if pin is not None else "a default version"
            raise NotFound(f"version: pipeline {record.pipeline} has no {which}")
        if version.status == "disabled":
            raise Conflict(f"version: version {version.version} of {record.pipeline} is disabled")
        limit = (version.spec.get("concurrency") or {}).get("max_active_runs")
        max_active = rules.max_active(request.max_active, limit)
        on = msgspec.convert(record.spec["on"], EventSource)
        zone = ZoneInfo(on.timezone) if isinstance(on, CronSource) else ZoneInfo("UTC")
        start = parse_instant(request.start, zone, "from")
        end = parse_instant(request.end, zone, "to")
        rules.check_range(start, end, datetime.now(UTC))
        if isinstance(on, CronSource):
            # Off the event loop: a range near the limit is a few seconds of cron arithmetic.
            total = await asyncio.to_thread(
                rules.count_cron_fires, Schedule(on.cron, on.timezone), start, end
            )
        else:
            assert isinstance(on, FilesSource)
            total = await _count_files(conn, on, start, end)
        return await backfill_store.create_backfill(
            conn,
            trigger=trigger,
            version=request.version,
            range_from=start,
            range_to=end,
            max_active=max_active,
            total=total,
        )


def files_to_replay(root: str, on: FilesSource, start: datetime, end: datetime) -> list[rules.FileAt]:
    """The files under ``root`` that ``on`` matches, modified in [start, end), in the backfill's order
    (blocking: a walk of the directory; FileNotFoundError when ``root`` is not there)."""
    found = scan(Matcher(root, on.pattern))
    return rules.files_in_range(((path, sig.mtime_ns, sig.size) for path, sig in found.items()), start, end)


async def _count_files(conn: asyncpg.Connection, on: FilesSource, start: datetime, end: datetime) -> int:
    datastore = await get_datastore(conn, on.datastore)
    if datastore is not None and datastore.type == "s3":
        raise Invalid(f"trigger: its datastore {on.datastore} is s3: {S3_FILES_NOT_YET}")
    root = None if datastore is None else datastore.spec.get("path")
    if not root:
        raise Invalid(f"trigger: its datastore {on.datastore} has no local path to scan")
    try:
        files = await asyncio.to_thread(files_to_replay, str(root), on, start, end)
    except FileNotFoundError:
        raise Invalid(f"trigger: the directory {root} of datastore {on.datastore} does not exist") from None
    if on.batch > 0:
        return sum(1 for _ in rules.batch_windows(files, start, on.batch))
    return len(files)
