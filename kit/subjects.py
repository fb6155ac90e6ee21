"""The names Sluice's processes share on NATS: subject roots, the run announcements, the step events'
stream and the source snapshot bucket, and the syntax of a subject.

The subjects of the conversation with agents (heartbeats, assignments, cancels, step events, logs,
inboxes) are built on these roots by the wire, ``runners.protocol``.
"""

from __future__ import annotations

import re

AGENTS = "sluice.agents"
"""``sluice.agents.<agent>.<heartbeat|assign|cancel>``."""
STEPS = "sluice.steps"
"""``sluice.steps.<agent>.<attempt id>.<started|finished>``: step events, captured by ``STEPS_STREAM``."""
LOGS = "sluice.logs"
"""``sluice.logs.<agent>.<run id>.<step>``: live output lines."""
RUNS = "sluice.runs"
"""``sluice.runs.<pipeline>.<status>``: the daemon's announcements of run changes (contract §5)."""
SUBMIT = "sluice.submit"
"""``sluice.submit.<pipeline>``: requests to start a run."""
JS_API = "$JS.API"

STEPS_STREAM = "SLUICE_STEPS"
"""JetStream stream capturing ``STEP_EVENTS``: step events survive a daemon restart."""
STEP_EVENTS = f"{STEPS}.>"

SOURCES_BUCKET = "sluice-sources"
"""JetStream object store that holds version source snapshots (uncompressed tar), named by digest."""
SOURCES_STREAM = f"OBJ_{SOURCES_BUCKET}"
"""The stream under the bucket; agents read objects from it a message at a time."""
SOURCES_SUBJECTS = f"$O.{SOURCES_BUCKET}"

_SUBJECT_TOKEN = re.compile(r"[^\s.*>]+")
_AGENT_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")


def run_subject(pipeline: str, status: str) -> str:
    """Where the daemon announces that a run of ``pipeline`` reached ``status``."""
    return f"{RUNS}.{pipeline}.{status}"


def source_chunks(nuid: str) -> str:
    """The subject of an object's chunks in ``SOURCES_STREAM`` (``nuid`` from its metadata)."""
    return f"{SOURCES_SUBJECTS}.C.{nuid}"


def subject_problem(subject: str) -> str | None:
    """Why ``subject`` is not a NATS subject one may subscribe to, or None: non-empty tokens separated
    by '.', where a token may be the wildcard ``*`` and the last token may be ``>``."""
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if token == "*" or (token == ">" and index == len(tokens) - 1):
            continue
        if not _SUBJECT_TOKEN.fullmatch(token):
            return (
                f"bad NATS subject {subject!r} (tokens separated by '.', no spaces, "
                "'*' as a whole token, '>' only as the last token)"
            )
    return None


_SYSTEM_ROOTS = ("sluice", "_INBOX")


def trigger_subject_problem(subject: str) -> str | None:
    """Why a trigger may not listen on ``subject``, or None: it must be a subject, and one that
    cannot match Sluice's own traffic (heartbeats, step events, logs, inboxes) or the server's
    (``$…``): the daemon's connection may read all of it, and whoever applies a trigger should not."""
    if problem := subject_problem(subject):
        return problem
    first = subject.split(".", 1)[0]
    if first in ("*", ">") or first in _SYSTEM_ROOTS or first.startswith("$"):
        return (
            f"subject {subject!r} may match Sluice's or the server's own subjects: "
            "start it with a name of yours"
        )
    return None


def check_agent_name(name: str) -> str:
    """An agent name is one NATS subject token: letters, digits, ``_`` and ``-``. Raises ``ValueError``."""
    if not _AGENT_NAME.fullmatch(name):
        raise ValueError(f"bad agent name {name!r} (use letters, digits, '_' and '-')")
    return name
