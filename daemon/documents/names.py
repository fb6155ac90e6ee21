"""The syntax of the names that documents use.

Each ``*_problem`` function returns ``None`` for a good name, else a message saying what is expected.
"""

from __future__ import annotations

import re

# Documents, steps and datastores: usable in URLs, NATS subjects and directory names as they are.
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Params, inputs, outputs and env keys: they become parts of environment variable names.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STREAM = re.compile(r"[A-Za-z0-9_-]{1,255}")
LOGS = "logs"
"""Not an output's name: ``runs/<run>/<step>/logs`` beside a step's outputs holds its attempts' logs."""


def name_problem(name: str) -> str | None:
    if NAME.fullmatch(name):
        return None
    return f"bad name {name!r} (use a-z, 0-9 and '-', starting with a letter or digit, at most 63)"


def identifier_problem(name: str) -> str | None:
    if IDENTIFIER.fullmatch(name):
        return None
    return f"bad name {name!r} (use letters, digits and '_', not starting with a digit)"


def stream_problem(stream: str) -> str | None:
    if _STREAM.fullmatch(stream):
        return None
    return f"bad JetStream stream name {stream!r} (use letters, digits, '_' and '-')"
