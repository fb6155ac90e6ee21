"""What a NATS message is as a trigger's event: its fields (contract §3), whether it matches a
trigger's ``match``, and its dedupe key. Pure functions."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import msgspec

MSG_ID_HEADER = "Nats-Msg-Id"


def decode_data(payload: bytes) -> Any:
    """A message payload as the ``data`` event field: any JSON value, or the text when not JSON."""
    try:
        return msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return payload.decode("utf-8", errors="replace")


def event_fields(subject: str, payload: bytes, headers: Mapping[str, str] | None) -> dict[str, Any]:
    """The event fields of contract §3 for one message: ``subject``, ``data``, ``headers``."""
    return {
        "subject": subject,
        "data": decode_data(payload),
        "headers": {str(name): value for name, value in (headers or {}).items()},
    }


_MISSING = object()


def lookup(fields: Any, path: str) -> Any:
    """The value at dotted ``path`` in nested mappings (and lists, by index), or ``_MISSING``."""
    value = fields
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def same_value(actual: Any, expected: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``, ``null`` is ``None``."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    return actual == expected


def matches(fields: Mapping[str, Any], match: Mapping[str, Any]) -> bool:
    """Whether every dotted path of ``match`` (relative to the event fields, e.g. ``data.kind``)
    is present in ``fields`` and equals the given value."""
    for path, expected in match.items():
        actual = lookup(fields, path)
        if actual is _MISSING or not same_value(actual, expected):
            return False
    return True


def stream_dedupe_key(headers: Mapping[str, str] | None, stream: str, stream_seq: int) -> str:
    """A JetStream message's dedupe key: its ``Nats-Msg-Id`` (the publisher's own id, which holds
    beyond the stream's duplicate window), else its place in the stream (the same on redelivery)."""
    msg_id = (headers or {}).get(MSG_ID_HEADER)
    return msg_id if msg_id else f"{stream}:{stream_seq}"


def core_dedupe_key(headers: Mapping[str, str] | None) -> str:
    """A core message's dedupe key: its ``Nats-Msg-Id``, else a fresh one (core NATS never
    redelivers, so nothing else could repeat it; a publisher that retries should set the header)."""
    msg_id = (headers or {}).get(MSG_ID_HEADER)
    return msg_id if msg_id else uuid.uuid4().hex
