"""The wire between the daemon and its agents: subjects and typed messages both sides agree on.

Agents need NATS only. Everything they exchange with the daemon is named here, so that neither side
hard-codes the other's subjects (their roots, the step events' stream and the snapshot bucket are
named in ``kit.subjects``, shared with the triggers). Messages are msgspec structs encoded as JSON
(readable with ``nats sub``); ``decode`` raises ``msgspec.ValidationError`` naming the bad field.

Every subject an agent publishes on carries its name, and no message carries it: the NATS server
lets agent ``NAME`` publish only on subjects with its own name (its credentials say so), so the
subject is the authenticated sender and the daemon takes the agent from the subject, never from a
payload.

The conversation, for one attempt of one step:

1. Every agent publishes a ``Heartbeat`` on ``heartbeat_subject(name)`` each ``HEARTBEAT_INTERVAL_S``
   (core NATS: a lost beat is harmless). The daemon marks an agent ``lost`` after it has been silent
   for ``HEARTBEAT_TIMEOUT_S``.
2. The daemon places a ready step on an agent, records the attempt, then sends an ``Assignment`` to
   ``assign_subject(name)`` by request/reply. The agent answers ``AssignReply``: accepted, or
   refused with a reason (no room any more, unknown executor, draining, a path outside its
   datastores). A refused or unanswered assignment leaves the step ready for another placement.
3. The agent publishes ``StepStarted`` and, at the end, ``StepFinished`` on
   ``step_event_subject(name, attempt_id, kind)``, captured by the JetStream stream
   ``STEPS_STREAM``. It publishes each until JetStream acknowledges it (``Nats-Msg-Id`` =
   ``step_event_id(...)``, which includes the agent's name, so a republished event is stored once and
   no other agent can claim its id); the daemon consumes the stream durably, applies an event only
   when the subject's agent is the one the attempt was assigned to, in one transaction, acks after
   commit, and ignores an event that no longer changes anything.
4. While a step runs, its output lines go out on ``log_subject(name, run_id, step)`` as ``LogLines``
   (best effort, for live following) and into ``Assignment.log_path`` (the complete log).
5. ``Cancel`` on ``cancel_subject(name)`` (request/reply) stops an attempt; the agent then reports
   it finished with status ``cancelled``.

Replies reach each side on an inbox of its own (``inbox_prefix``), under ``INBOX_ROOT`` where no
service may listen.

The daemon renders every template before it assigns: ``argv`` and ``env`` hold final strings, with
datastore paths as the chosen agent sees them (its heartbeat's ``datastores`` overrides the paths of
the daemon's Datastore documents). The agent only executes, and refuses paths outside its datastores.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Self

import msgspec

from kit.objectstore import S3Location
from kit.subjects import AGENTS, LOGS, STEPS

HEARTBEATS = f"{AGENTS}.*.heartbeat"
INBOX_ROOT = "sluice.inbox"
"""Replies to the daemon and to agents: only Sluice's own identities may subscribe below it."""
DAEMON_INBOX = f"{INBOX_ROOT}.daemon"
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0
ASSIGN_TIMEOUT_S = 2.0
"""How long the daemon waits for an agent to accept an assignment before trying elsewhere."""

Executor = Literal["process", "docker"]
AttemptOutcome = Literal["succeeded", "failed", "cancelled", "lost"]
"""``lost``: the agent stopped the attempt because the agent itself was stopping; the step runs
again, elsewhere or later, without counting as a failure."""
StepEventKind = Literal["started", "finished"]


def heartbeat_subject(agent: str) -> str:
    return f"{AGENTS}.{agent}.heartbeat"


def assign_subject(agent: str) -> str:
    return f"{AGENTS}.{agent}.assign"


def cancel_subject(agent: str) -> str:
    return f"{AGENTS}.{agent}.cancel"


def step_event_subject(agent: str, attempt_id: int, kind: StepEventKind) -> str:
    return f"{STEPS}.{agent}.{attempt_id}.{kind}"


def step_event_id(agent: str, attempt_id: int, kind: StepEventKind) -> str:
    """The ``Nats-Msg-Id`` of a step event: with the agent's name, so that an event published by
    another agent under the same attempt and kind can never make JetStream drop the real one."""
    return f"{agent}.{attempt_id}.{kind}"


def log_subject(agent: str, run_id: str, step: str) -> str:
    return f"{LOGS}.{agent}.{run_id}.{step}"


def agent_inbox(agent: str) -> str:
    """The prefix of agent ``agent``'s reply subjects."""
    return f"{INBOX_ROOT}.agent.{agent}"


def heartbeat_sender(subject: str) -> str:
    """The agent a heartbeat subject names. Raises ``ValueError`` for another subject."""
    parts = subject.split(".")
    if len(parts) != 4 or ".".join(parts[:2]) != AGENTS or parts[3] != "heartbeat":
        raise ValueError(f"not a heartbeat subject: {subject!r}")
    return parts[2]


def step_event_origin(subject: str) -> tuple[str, int, StepEventKind]:
    """The agent, attempt id and kind a step event subject names. Raises ``ValueError`` for
    another subject."""
    parts = subject.split(".")
    if len(parts) != 5 or ".".join(parts[:2]) != STEPS or parts[4] not in ("started", "finished"):
        raise ValueError(f"not a step event subject: {subject!r}")
    if not parts[3].isdigit() or not 0 < (attempt_id := int(parts[3])) < 2**63:
        raise ValueError(f"not a step event subject: {subject!r}")
    return parts[2], attempt_id, parts[4]  # type: ignore[return-value]


class _Message(msgspec.Struct, frozen=True):
    """A message on the wire (``kw_only`` does not inherit: each message sets it)."""

    def encode(self) -> bytes:
        return _encoder.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        return msgspec.json.decode(data, type=cls)


_encoder = msgspec.json.Encoder()


class Gpu(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    name: str
    memory: int  # bytes


class Capacity(msgspec.Struct, frozen=True, kw_only=True):
    cpu: float  # cores
    memory: int  # bytes
    gpus: list[Gpu] = msgspec.field(default_factory=list)


class Heartbeat(_Message, kw_only=True):
    """What an agent has (who it is, its subject says). ``running`` lists the attempt ids it
    executes now; the daemon re-adopts them after a restart and treats attempts it thinks are on
    this agent but are not listed (for longer than an assignment takes) as lost."""

    labels: dict[str, str] = msgspec.field(default_factory=dict)
    executors: list[Executor]
    capacity: Capacity
    datastores: dict[str, str] = msgspec.field(default_factory=dict)  # name -> local path overrides
    staging: str | None = None
    """Where this agent stages the files of ``s3`` datastores (see ``Assignment.stores``); an agent
    without it takes no step that uses one."""
    running: list[int] = msgspec.field(default_factory=list)
    draining: bool = False  # finishing what it runs, accepting nothing new
    stopped: bool = False  # the last beat of an agent that stopped cleanly
    sent_at: float  # unix time


class Resources(msgspec.Struct, frozen=True, kw_only=True):
    cpu: float
    memory: int  # bytes; 0 = unspecified
    gpu: int = 0
    gpu_memory: int | None = None  # bytes, per GPU


class Upstream(msgspec.Struct, frozen=True, kw_only=True):
    """The step output an input is: ``output`` of ``step`` in run ``run_id`` (for a reused step, the
    run and step whose output it reuses)."""

    run_id: str
    step: str
    output: str


class Assignment(_Message, kw_only=True):
    """One attempt of one step, ready to execute.

    ``datastores`` are the roots, as this agent sees them, of the datastores the attempt uses: its
    ``log_path``, ``inputs`` and ``outputs`` lie under them (the agent refuses the attempt otherwise,
    symlinks followed), and a container sees each root at the same path (so that paths in ``argv``
    and ``env`` stay valid). ``outputs`` are directories the agent creates before starting (the step
    writes into them). ``gpus`` are the indices the daemon reserved on the
    agent. ``stores`` are the datastores of type ``s3`` the attempt uses: each one's root in
    ``datastores`` is a directory under the agent's ``Heartbeat.staging`` for this step run, and a path
    under that root stands for the same path under the store's prefix. The agent downloads the
    inputs under such a root before the step starts (a step's output through its manifests,
    ``kit.objectstore``), and after the step succeeded uploads its outputs there and publishes each
    with its manifest; the log under such a root is uploaded as it grows. ``upstream`` names the
    inputs that are a step's output (the others are datastore paths): that step succeeded, so such
    an input under an ``s3`` root is published, and the agent fails the attempt when it finds no
    manifest there rather than start the step without it. ``source_digest`` names
    the snapshot in ``SOURCES_BUCKET`` to unpack as the working directory; without one the step
    starts in an empty working directory. The agent adds
    ``SLUICE_METRICS`` (a file in the work dir) to ``env`` and reads it back at the end.
    """

    attempt_id: int
    run_id: str
    pipeline: str
    version: int
    step: str
    number: int  # 1 for the first attempt
    argv: list[str]
    env: dict[str, str]
    image: str | None = None
    resources: Resources
    gpus: list[int] = msgspec.field(default_factory=list)
    source_digest: str | None = None
    inputs: dict[str, str] = msgspec.field(default_factory=dict)  # name -> local path
    upstream: dict[str, Upstream] = msgspec.field(default_factory=dict)  # input name -> step output
    outputs: dict[str, str] = msgspec.field(default_factory=dict)  # name -> local directory
    datastores: dict[str, str] = msgspec.field(default_factory=dict)  # name -> local root
    stores: dict[str, S3Location] = msgspec.field(default_factory=dict)  # s3 datastores by name
    log_path: str  # local file for the complete log of this attempt
    timeout_s: float | None = None


class AssignReply(_Message, kw_only=True):
    """``permanent``: refused for what the assignment is (malformed), so no retry can succeed; else
    for what this agent has or knows now (room, draining, its datastores)."""

    accepted: bool
    reason: str | None = None
    permanent: bool = False


class Cancel(_Message, kw_only=True):
    attempt_id: int
    reason: str = "cancelled"


class CancelReply(_Message, kw_only=True):
    found: bool


class StepStarted(_Message, kw_only=True):
    attempt_id: int
    started_at: float  # unix time
    image_digest: str | None = None  # the image's digest where the executor knows it

    kind: ClassVar[StepEventKind] = "started"


class Metric(msgspec.Struct, frozen=True, kw_only=True):
    """One JSON line a step appended to ``SLUICE_METRICS``; extra keys are kept in ``extra``."""

    name: str
    value: float | int | str | bool | None
    extra: dict[str, object] = msgspec.field(default_factory=dict)


class StepFinished(_Message, kw_only=True):
    """How an attempt ended. ``status`` is ``failed`` for a non-zero exit, a timeout (``error`` says
    so) or a failure to start (``exit_code`` None); ``cancelled`` after a ``Cancel``; ``lost`` when
    the agent stopped it because the agent was stopping."""

    attempt_id: int
    status: AttemptOutcome
    exit_code: int | None = None
    error: str | None = None
    metrics: list[Metric] = msgspec.field(default_factory=list)
    started_at: float | None = None
    finished_at: float

    kind: ClassVar[StepEventKind] = "finished"


class LogLines(_Message, kw_only=True):
    attempt_id: int
    number: int  # attempt number
    stream: Literal["stdout", "stderr"]
    lines: list[str]
