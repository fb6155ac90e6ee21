"""The shapes of the documents as written in YAML, before normalisation.

msgspec checks these structurally (types, unknown keys, required keys); the builders in
``pipeline``, ``trigger`` and ``datastore`` turn them into specs and check everything else. Kind,
name and apiVersion are taken off a document before it is converted to one of these.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

from daemon.documents.specs import (
    Concurrency,
    CronCatchup,
    FileEvent,
    FilesNotifications,
    FromDatastore,
    NatsSource,
    ParamSpec,
    RunSource,
    Scalar,
)

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class _Raw(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Options every raw struct shares (``kw_only`` does not inherit, so each struct sets it)."""


class RawResources(_Raw, kw_only=True):
    cpu: float | str = 1.0
    memory: int | str = 0
    gpu: NonNegative = 0
    gpu_memory: int | str | None = None


class RawStepFields(_Raw, kw_only=True):
    """Every step field but the name, each UNSET when not written: the shape of ``defaults``."""

    command: list[str] | UnsetType = UNSET
    image: str | UnsetType = UNSET
    inputs: dict[str, str | FromDatastore] | UnsetType = UNSET
    outputs: list[str] | UnsetType = UNSET
    resources: RawResources | UnsetType = UNSET
    selector: dict[str, str] | UnsetType = UNSET
    after: list[str] | UnsetType = UNSET
    env: dict[str, str] | UnsetType = UNSET
    retries: NonNegative | UnsetType = UNSET
    timeout: float | str | UnsetType = UNSET
    reuse: bool | UnsetType = UNSET


class RawFilesOver(_Raw, kw_only=True):
    input: str
    pattern: str = "*"
    per: Positive = 1


class RawForeach(_Raw, kw_only=True):
    """``foreach:`` names one of files, items (``${params.NAME}`` of a list param) or shards."""

    files: RawFilesOver | UnsetType = UNSET
    items: str | UnsetType = UNSET
    shards: Positive | UnsetType = UNSET
    max_parallel: Positive | None = None
    allowed_failures: NonNegative | str = 0


class RawStep(RawStepFields, kw_only=True):
    """A step: the fields ``defaults`` may give, its name, and ``foreach``, which only a step has."""

    name: str
    foreach: RawForeach | None = None


class RawPipeline(_Raw, kw_only=True):
    description: str = ""
    params: dict[str, ParamSpec] = msgspec.field(default_factory=dict)
    source: str | None = None
    concurrency: Concurrency | None = None
    defaults: RawStepFields | None = None
    steps: list[RawStep]


class RawFiles(_Raw, kw_only=True):
    datastore: str
    pattern: str
    events: list[FileEvent] = msgspec.field(default_factory=lambda: ["created", "modified"])
    settle: float | str = 2.0
    batch: float | str = 0.0
    watch: Literal["auto", "inotify", "poll"] = "auto"
    poll_interval: float | str = 10.0
    notifications: FilesNotifications | None = None


class RawOn(_Raw, kw_only=True):
    """``on:`` names one source key (cron, files, nats, run); timezone and catchup go with cron."""

    cron: str | UnsetType = UNSET
    timezone: str | UnsetType = UNSET
    catchup: CronCatchup | UnsetType = UNSET
    files: RawFiles | UnsetType = UNSET
    nats: NatsSource | UnsetType = UNSET
    run: RunSource | UnsetType = UNSET


class RawTrigger(_Raw, kw_only=True):
    pipeline: str
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None
    on: RawOn
    params: dict[str, Scalar] = msgspec.field(default_factory=dict)


class RawDatastore(_Raw, kw_only=True):
    type: Literal["local"] = "local"
    path: str
