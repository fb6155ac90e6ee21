"""Who may do what on NATS: the subjects each role of Sluice's may publish and subscribe to.

Pure: roles in, ``Permissions`` out, for the NATS server to enforce (it refuses a publish or a
subscription outside them, whatever the client says). Subjects come from ``runners.protocol``.

- ``daemon``: everything under ``sluice.>``, the JetStream API, and any subject to read (trigger
  subjects are the users'); it answers requests on their reply subjects only.
- ``agent NAME``: publishes only its own heartbeat, step events and log lines; receives only its own
  assignments and cancels and its own replies; reads the source snapshot bucket.
- ``service NAME``: requests ``sluice.submit.<pipeline>`` and follows ``sluice.runs.<pipeline>.>`` (all
  pipelines, or the listed ones), publishes on the listed trigger subjects; never an agent, step,
  log or JetStream subject.
- ``admin NAME``: every right in Sluice's account (streams for JetStream triggers, the ``nats`` CLI);
  as powerful as the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from daemon.trust.claims import Permissions
from kit.subjects import (
    AGENTS,
    JS_API,
    LOGS,
    RUNS,
    SOURCES_STREAM,
    SOURCES_SUBJECTS,
    STEPS,
    SUBMIT,
    subject_problem,
)
from runners.protocol import INBOX_ROOT, agent_inbox, assign_subject, cancel_subject, heartbeat_subject

Role = Literal["agent", "service", "admin"]

SERVICE_INBOX = "_INBOX.>"
"""Services reply on NATS's default inboxes, so that any client works as it is."""

SOURCE_READER = (
    # Open the bucket, then read an object's meta and its chunks one message at a time. Never a
    # consumer: the server does not check where a consumer delivers, so it would let an agent have
    # JetStream publish on any subject.
    f"{JS_API}.STREAM.INFO.{SOURCES_STREAM}",
    f"{JS_API}.STREAM.MSG.GET.{SOURCES_STREAM}",
)
RESERVED = (
    f"{AGENTS}.>",
    f"{STEPS}.>",
    f"{LOGS}.>",
    f"{RUNS}.>",
    f"{INBOX_ROOT}.>",
    "$JS.>",
    "$KV.>",
    "$O.>",
    "$SYS.>",
)
"""What no service may publish on, whatever subjects it was given."""


class SubjectError(ValueError):
    """A subject a service may not be given; the message says which and why."""


def daemon() -> Permissions:
    # Replies to services go to their inboxes by a plain permission, not "responses": with that the
    # server would track the reply subject of every message the daemon receives (each JetStream
    # delivery has one), which costs it more than the daemon's whole share of the work.
    return Permissions(
        publish=("sluice.>", f"{JS_API}.>", "$JS.ACK.>", "$JS.FC.>", f"{SOURCES_SUBJECTS}.>", SERVICE_INBOX),
        subscribe=(">",),
    )


def agent(name: str) -> Permissions:
    return Permissions(
        publish=(
            heartbeat_subject(name),
            f"{STEPS}.{name}.>",
            f"{LOGS}.{name}.>",
            *SOURCE_READER,
        ),
        subscribe=(assign_subject(name), cancel_subject(name), f"{agent_inbox(name)}.>"),
        responses=True,
    )


def admin() -> Permissions:
    return Permissions(publish=(">",), subscribe=(">",), responses=True)


def system_pusher() -> Permissions:
    """The daemon's user in the system account: it pushes account updates (revocations) only."""
    return Permissions(
        publish=("$SYS.REQ.CLAIMS.UPDATE", "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE"), subscribe=("_INBOX.>",)
    )


@dataclass(frozen=True, slots=True)
class ServiceGrant:
    """What a service was given: pipelines it may submit to and follow (None = all) and trigger
    subjects it may publish on."""

    submit: tuple[str, ...] | None = None
    follow: tuple[str, ...] | None = None
    publish: tuple[str, ...] = field(default_factory=tuple)

    def check(self) -> None:
        """Raises ``SubjectError`` for a publish subject that is not a NATS subject, lies inside
        Sluice's own subjects, or would reach ``sluice.submit`` for pipelines not granted."""
        for subject in self.publish:
            if (problem := subject_problem(subject)) is not None:
                raise SubjectError(problem)
            if is_within(subject, f"{SUBMIT}.>"):
                raise SubjectError(f"{subject}: submitting is granted with --submit, not --publish")
            for reserved in ("sluice.>", *RESERVED, "_INBOX.>"):
                if is_within(subject, reserved):
                    raise SubjectError(f"{subject}: Sluice's own subject, no service may publish on it")
            if self.submit is not None and overlaps(subject, f"{SUBMIT}.*"):
                raise SubjectError(
                    f"{subject}: would submit to every pipeline; narrow it, or grant --submit for all"
                )


def service(grant: ServiceGrant) -> Permissions:
    """Raises ``SubjectError`` (see ``ServiceGrant.check``)."""
    grant.check()
    submit = [f"{SUBMIT}.*"] if grant.submit is None else [f"{SUBMIT}.{p}" for p in grant.submit]
    follow = [f"{RUNS}.>"] if grant.follow is None else [f"{RUNS}.{p}.>" for p in grant.follow]
    return Permissions(
        publish=(*submit, *grant.publish),
        subscribe=(SERVICE_INBOX, *follow),
        deny_publish=RESERVED,
    )


def is_within(subject: str, pattern: str) -> bool:
    """Whether every subject that ``subject`` matches is matched by ``pattern`` too."""
    mine, theirs = subject.split("."), pattern.split(".")
    for index, token in enumerate(theirs):
        if token == ">":
            return len(mine) > index
        if index >= len(mine):
            return False
        if mine[index] == ">" or (token != "*" and (mine[index] == "*" or mine[index] != token)):
            return False
    return len(mine) == len(theirs)


def overlaps(one: str, other: str) -> bool:
    """Whether some subject is matched by both patterns."""
    first, second = one.split("."), other.split(".")
    for index in range(max(len(first), len(second))):
        a = first[index] if index < len(first) else None
        b = second[index] if index < len(second) else None
        if a == ">" or b == ">":
            return a is not None and b is not None
        if a is None or b is None:
            return False
        if a != b and "*" not in (a, b):
            return False
    return True


def describe(role: Role, grant: ServiceGrant | None) -> str:
    """One line on what a credential may do, for listings."""
    if role == "agent":
        return "its own heartbeat, assignments, step events and logs"
    if role == "admin":
        return "everything in Sluice's NATS account"
    grant = grant or ServiceGrant()
    parts = [
        "submit " + ("all" if grant.submit is None else ", ".join(grant.submit) or "none"),
        "follow " + ("all" if grant.follow is None else ", ".join(grant.follow) or "none"),
    ]
    if grant.publish:
        parts.append("publish " + ", ".join(grant.publish))
    return "; ".join(parts)
