"""The validated, normalised form of each kind of document.

These are what the rest of Sluice works with. Every value is explicit and canonical: sizes in bytes,
durations and CPU as float seconds and cores, step defaults already merged into each step. They
round-trip through ``msgspec.to_builtins`` / ``msgspec.convert`` (see ``daemon.documents.canonical``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from kit.objectstore import S3Location
from triggers.specs import (  # noqa: F401 - the trigger sources' own specs, part of TriggerSpec
    CronCatchup,
    CronSource,
    EventSource,
    FileEvent,
    FilesNotifications,
    FilesSource,
    NatsSource,
    RunSource,
    RunStatus,
    Scalar,
)

InputMode = Literal["download", "uri"]
ParamType = Literal["string", "integer", "number", "boolean", "list"]
ParamValue = Scalar | list[Scalar]
"""A param's value: a scalar, or for a ``list`` param a list of scalars (JSON)."""
# How messages name a value of each param type: "must be an integer".
PARAM_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "list": "a list of strings, numbers or booleans",
}


class _Spec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Options every spec struct shares (``kw_only`` does not inherit, so each struct sets it)."""


class ParamSpec(_Spec, kw_only=True):
    """A typed pipeline parameter; without a default it is required. A ``list`` param's value is a
    JSON list of scalars (what ``foreach: {items: ...}`` fans out over)."""

    type: ParamType
    default: ParamValue | None = None
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is None

    def accepts(self, value: object) -> bool:
        """Whether ``value`` (a Python value, not text) has this parameter's type."""
        if self.type == "string":
            return isinstance(value, str)
        if self.type == "boolean":
            return isinstance(value, bool)
        if self.type == "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        if self.type == "list":
            return isinstance(value, list) and all(isinstance(item, str | int | float) for item in value)
        return isinstance(value, int | float) and not isinstance(value, bool)


class Concurrency(_Spec, kw_only=True):
    """At most ``max_active_runs`` runs at once; a run beyond that waits (queue) or is not created (skip)."""

    max_active_runs: Annotated[int, msgspec.Meta(ge=1)]
    on_limit: Literal["queue", "skip"] = "queue"


class Resources(_Spec, kw_only=True):
    """What a step needs from an agent. ``memory`` 0 means unspecified."""

    cpu: float = 1.0
    memory: int = 0
    gpu: int = 0
    gpu_memory: int | None = None


class FromStep(_Spec, kw_only=True, tag="step", tag_field="from"):
    """An input that is the output directory ``output`` of step ``step`` of the same run: downloaded
    from an ``s3`` ``default`` (``mode: download``), or given as its ``s3://`` prefix (``uri``)."""

    step: str
    output: str
    mode: InputMode = "download"


class FromDatastore(_Spec, kw_only=True, tag="datastore", tag_field="from"):
    """An input read from ``path`` (may hold ``${params.…}``/``${run.…}``) in a datastore.

    ``hash`` says how its fingerprint is taken: from the file listing (names, sizes, mtimes) or content.
    ``mode``: ``download`` gives the step a local path (an ``s3`` datastore's files are downloaded
    first); ``uri`` gives an ``s3`` datastore's input as ``s3://bucket/key`` for steps that read the
    store themselves (a ``local`` datastore's input is its path either way).
    """

    datastore: str
    path: str
    hash: Literal["listing", "content"] = "listing"
    mode: InputMode = "download"


StepInput = FromStep | FromDatastore


class OverFiles(_Spec, kw_only=True, tag="files", tag_field="kind"):
    """Partitions of up to ``per`` of the files matching ``pattern`` (a glob, as files triggers
    match) under the step's datastore input ``input``."""

    input: str
    pattern: str = "*"
    per: int = 1


class OverItems(_Spec, kw_only=True, tag="items", tag_field="kind"):
    """One partition per item of the list param ``param``."""

    param: str


class OverShards(_Spec, kw_only=True, tag="shards", tag_field="kind"):
    """``count`` partitions, numbered 0 to count - 1."""

    count: int


Over = OverFiles | OverItems | OverShards


class Foreach(_Spec, kw_only=True):
    """How a step fans out (see ``daemon.rules.partitions``). ``max_parallel`` None = no bound;
    ``allowed_failures`` is a count, or a percentage of the partitions such as ``"10%"``."""

    over: Over
    max_parallel: int | None = None
    allowed_failures: int | str = 0


class StepSpec(_Spec, kw_only=True):
    """One step with the pipeline's defaults merged in. ``timeout`` None = no limit; ``image`` None =
    runs as a process; ``foreach`` None = runs once."""

    name: str
    command: list[str]
    image: str | None = None
    inputs: dict[str, StepInput] = msgspec.field(default_factory=dict)
    outputs: list[str] = msgspec.field(default_factory=list)
    resources: Resources = msgspec.field(default_factory=Resources)
    selector: dict[str, str] = msgspec.field(default_factory=dict)
    after: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    retries: int = 0
    timeout: float | None = None
    reuse: bool = True
    foreach: Foreach | None = None


class PipelineSpec(_Spec, kw_only=True):
    """A pipeline. ``source`` is the directory as written, relative to the YAML file; ``concurrency``
    None = no limit."""

    name: str
    description: str = ""
    params: dict[str, ParamSpec] = msgspec.field(default_factory=dict)
    source: str | None = None
    concurrency: Concurrency | None = None
    steps: list[StepSpec]


class TriggerSpec(_Spec, kw_only=True):
    """A trigger. ``params`` values are scalars or strings that may hold ``${event.…}``."""

    name: str
    pipeline: str
    version: int | None = None
    on: EventSource
    params: dict[str, Scalar] = msgspec.field(default_factory=dict)

    @property
    def source(self) -> str:
        """``cron``, ``files``, ``nats`` or ``run``."""
        return self.on.__struct_config__.tag


class DatastoreSpec(_Spec, kw_only=True):
    """``local``: a directory at ``path`` (as the daemon sees it; agents may announce their own).
    ``s3``: a bucket and prefix, ``s3``, whose credentials are named, never written."""

    name: str
    type: Literal["local", "s3"] = "local"
    path: str | None = None
    s3: S3Location | None = None

    def settings(self) -> dict[str, Any]:
        """What is stored for the datastore beside its name and type: ``{"path": …}`` for ``local``,
        the fields of its ``S3Location`` for ``s3``."""
        if self.s3 is not None:
            return msgspec.to_builtins(self.s3)
        return {"path": self.path}


Spec = PipelineSpec | TriggerSpec | DatastoreSpec
Kind = Literal["Pipeline", "Trigger", "Datastore"]


class Document(msgspec.Struct, frozen=True, kw_only=True):
    """One validated document. ``file`` and ``line`` say where it was written; ``lines`` maps field
    paths (``steps[0].inputs.raw``) to their lines, for problems found later (``check_references``)."""

    kind: Kind
    name: str
    file: str
    line: int
    spec: Spec
    lines: dict[str, int] = msgspec.field(default_factory=dict)
