"""What each kind of trigger source watches, as a Trigger document's ``on:`` gives it, normalised
(durations in seconds). The daemon validates documents into these; sources run from them."""

from __future__ import annotations

from typing import Literal

import msgspec

Scalar = str | int | float | bool


class _Source(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Options every source spec shares (``kw_only`` does not inherit, so each struct sets it)."""


CronCatchup = Literal["none", "latest", "all"]
FileEvent = Literal["created", "modified", "deleted", "moved"]
RunStatus = Literal["succeeded", "failed", "cancelled"]


class CronSource(_Source, kw_only=True, tag="cron", tag_field="source"):
    cron: str
    timezone: str = "UTC"
    catchup: CronCatchup = "latest"


class FilesNotifications(_Source, kw_only=True):
    """Where a bucket's S3 event notifications arrive on NATS (MinIO's ``notify_nats`` target): each
    names objects to look at now rather than at the next poll."""

    subject: str


class FilesSource(_Source, kw_only=True, tag="files", tag_field="source"):
    """``watch`` applies to directories only: a bucket is listed every ``poll_interval`` (and fully
    every rescan interval), and ``notifications`` make it look at notified objects at once."""

    datastore: str
    pattern: str
    events: list[FileEvent] = msgspec.field(default_factory=lambda: ["created", "modified"])
    settle: float = 2.0
    batch: float = 0.0
    watch: Literal["auto", "inotify", "poll"] = "auto"
    poll_interval: float = 10.0
    notifications: FilesNotifications | None = None


class NatsSource(_Source, kw_only=True, tag="nats", tag_field="source"):
    """``match`` maps dotted JSON field paths of the message to the values they must equal."""

    subject: str
    stream: str | None = None
    match: dict[str, Scalar | None] = msgspec.field(default_factory=dict)


class RunSource(_Source, kw_only=True, tag="run", tag_field="source"):
    pipeline: str
    status: list[RunStatus] = msgspec.field(default_factory=lambda: ["succeeded"])


EventSource = CronSource | FilesSource | NatsSource | RunSource
