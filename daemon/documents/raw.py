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
    InputMode,
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


class RawInput(_Raw, kw_only=True):
    """An input written as a mapping: ``datastore`` and ``path`` (with ``hash``), or ``output``, an
    upstream step's output as ``${steps.STEP.outputs.NAME}``; either with ``mode``."""

    datastore: str | UnsetType = UNSET
    path: str | UnsetType = UNSET
    hash: Literal["listing", "content"] | UnsetType = UNSET
    output: str | UnsetType = UNSET
    mode: InputMode = "download"


class RawStepFields(_Raw, kw_only=True):
    """Every step field but the name, each UNSET when not written: the shape of ``defaults``."""

    command: list[str] | UnsetType = UNSET
    image: str | UnsetType = UNSET
    inputs: dict[str, str | RawInput] | UnsetType = UNSET
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


class InlineSecrets(_Raw, kw_only=True):
    """Secrets written inline where an ``s3`` datastore may be configured: read only to refuse them
    with a message that says what to write instead."""

    access_key_id: object = None
    secret_access_key: object = None
    session_token: object = None


class RawCredentials(InlineSecrets, kw_only=True):
    """How an ``s3`` datastore's machines find its credentials: environment variable names, or a
    shared credentials file and profile."""

    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None
    file: str | None = None
    profile: str | None = None


class RawDatastore(InlineSecrets, kw_only=True):
    """``local``: ``path``. ``s3``: ``bucket`` and the rest; each type's fields are refused on the other."""

    type: Literal["local", "s3"] = "local"
    path: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    endpoint: str | None = None
    region: str | None = None
    path_style: bool | None = None
    credentials: RawCredentials | None = None
