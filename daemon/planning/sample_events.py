"""The event a trigger's source would make, for a trigger test: made by the sources' own
constructors (``triggers.cronheap.fire_event``, ``triggers.files.delivery.files_event``,
``triggers.nats.events``, ``triggers.run.run_event``), from what the test gives — a fire time, a
file in the datastore, a message or a run summary — so a test sees the fields a live event has.

An input the source would never turn into an event (a file outside the pattern, a message that
``match`` drops, a run of another pipeline or status) is :class:`Ignored`, with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from daemon.errors import BadRequest
from daemon.rules.instants import parse_instant
from triggers.base import TriggerEvent
from triggers.cronheap import fire_event
from triggers.cronplan import Schedule
from triggers.files.delivery import first_seen_event
from triggers.files.matching import Matcher, relative
from triggers.files.watch import signature
from triggers.nats.events import event_fields, matches
from triggers.run import run_event
from triggers.specs import CronSource, EventSource, FilesSource, NatsSource, RunSource

INPUTS = ("event", "file", "at")
"""What a test gives: exactly one, the one its trigger's source takes."""
TAKES = {CronSource: "at", FilesSource: "file", NatsSource: "event", RunSource: "event"}
KIND = {CronSource: "cron", FilesSource: "files", NatsSource: "nats", RunSource: "run"}
S3_FILES_NOT_YET = "trigger tests and backfills read the files of local datastores only, for now"
"""Why a trigger test or backfill of a files trigger on an ``s3`` datastore is refused."""
TEST_RUN_ID = "00000000-0000-0000-0000-000000000000"
"""The id of the run a ``run`` trigger test pretends finished, when the summary gives none."""


class TestInput(msgspec.Struct, forbid_unknown_fields=True):
    """``event``: a NATS message's data (``subject``: the subject it came on; default the trigger's)
    or a finished run's summary; ``file``: a path in the watched datastore; ``at``: a cron fire time
    (ISO 8601; without an offset, on the trigger's wall clock; default the next fire)."""

    event: Any = msgspec.UNSET
    file: str | None = None
    at: str | None = None
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """The source would make no event of the input."""

    reason: str


def check_input(on: EventSource, given: TestInput) -> None:
    """Raises ``BadRequest`` naming the field unless ``given`` holds at most the input ``on``'s kind
    takes (a cron test may give none: the next fire)."""
    wanted, kind = TAKES[type(on)], KIND[type(on)]
    present = [name for name in INPUTS if getattr(given, name) not in (None, msgspec.UNSET)]
    for name in present:
        if name != wanted:
            raise BadRequest(f"{name}: a {kind} trigger is tested with {wanted!r}, not {name!r}")
    if not present and wanted != "at":
        raise BadRequest(f"{wanted}: a {kind} trigger's test needs {wanted!r}")
    if given.subject is not None and not isinstance(on, NatsSource):
        raise BadRequest(f"subject: only a nats trigger's test takes a subject, not a {kind} one")


def cron_fire(on: CronSource, at: str | None, now: datetime) -> datetime:
    """The fire a cron test stands for: the first at or after ``at`` (naive: the trigger's wall
    clock), or the next one after ``now``.

    Raises:
        Invalid: ``at`` is not an ISO 8601 time or a date (naming ``at``).
        BadRequest: the schedule never fires after it.
    """
    schedule = Schedule(on.cron, on.timezone)
    # The first fire at or after ``at``: next_after takes the first strictly after its argument.
    after = now if at is None else parse_instant(at, schedule.zone, "at") - timedelta(microseconds=1)
    fire = schedule.next_after(after)
    if fire is None:
        raise BadRequest(f"at: {on.cron!r} never fires after {after.isoformat()}")
    return fire


def cron_event(name: str, on: CronSource, at: str | None, now: datetime) -> TriggerEvent:
    return fire_event(name, Schedule(on.cron, on.timezone), cron_fire(on, at, now))


def file_event(name: str, on: FilesSource, path: str, root: str | None) -> TriggerEvent | Ignored:
    """The event of ``path`` (relative to the datastore) settling as it is now (blocking: a stat).

    Raises:
        BadRequest: the daemon does not see the datastore, the path leaves it, or nothing is there.
    """
    if root is None:
        raise BadRequest(f"file: the daemon does not see datastore {on.datastore}")
    if "\0" in path:
        raise BadRequest("file: a path must not contain a NUL character")
    rel = relative(root, os.path.normpath(os.path.join(root, path)))
    if not rel or os.path.isabs(path):
        raise BadRequest(f"file: {path[:200]!r} is not a path inside datastore {on.datastore}")
    if (sig := signature(os.path.join(root, rel))) is None:
        raise BadRequest(f"file: there is no file {rel} in datastore {on.datastore}")
    if not Matcher(root, on.pattern).matches(rel):
        return Ignored(f"{rel} does not match the trigger's pattern {on.pattern!r}")
    return first_seen_event(name, on.datastore, [(rel, sig)], batched=False)


def message_event(name: str, on: NatsSource, data: Any, subject: str | None) -> TriggerEvent | Ignored:
    """The event of a message carrying ``data`` (as JSON) on ``subject`` (default the trigger's)."""
    fields = event_fields(subject or on.subject, msgspec.json.encode(data), None)
    if on.match and not matches(fields, on.match):
        return Ignored(f"the message does not match the trigger's match {on.match}")
    return TriggerEvent(trigger=name, dedupe_key="test", fields=fields)


def finished_run_event(name: str, on: RunSource, summary: Any) -> TriggerEvent | Ignored:
    """The event of a finished run ``summary`` (its pipeline and status default to the trigger's)."""
    if not isinstance(summary, dict):
        raise BadRequest("event: a run trigger's test takes a run summary, a JSON object")
    run = {"id": TEST_RUN_ID, "pipeline": on.pipeline, "status": on.status[0], **summary}
    if run["pipeline"] != on.pipeline or run["status"] not in on.status:
        return Ignored(
            f"the trigger follows runs of {on.pipeline} that ended {' or '.join(on.status)}, "
            f"not a run of {run['pipeline']} that ended {run['status']}"
        )
    return run_event(name, run)
