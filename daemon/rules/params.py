"""Run parameters checked against a pipeline version's schema (pure; no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from daemon.documents.specs import PARAM_TYPE_WORDS, ParamSpec, ParamValue
from daemon.errors import Invalid
from daemon.limits import storable

DEFAULT_MAX_BYTES = 256 * 1024
"""The most a run's params may weigh (as JSON), each and together: they travel in every assignment,
and NATS refuses a message over its payload limit (1 MiB by default)."""


def validate_params(
    schema: Mapping[str, ParamSpec],
    given: Mapping[str, Any],
    *,
    what: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, ParamValue]:
    """``given`` with defaults filled in, every value of its param's type (integers given for a
    ``number`` become floats; text given for a ``list`` is read as JSON, as ``-p models='["a", "b"]'``
    sends it), each and all of them at most ``max_bytes`` as JSON.

    ``what`` names the target in the message (``pipeline scoring version 3``).

    Raises:
        Invalid: an unknown param, a missing required one, a value of the wrong type or too large;
            ``details`` holds one ``{"path": "params.X", "message": …}`` per problem.
    """
    problems: list[dict[str, str]] = []
    for name in given:
        if name not in schema:
            known = ", ".join(sorted(schema)) or "none"
            problems.append({"path": f"params.{name}", "message": f"unknown param (known: {known})"})
    values: dict[str, ParamValue] = {}
    for name, spec in schema.items():
        if name in given:
            value = given[name]
            if spec.type == "list" and isinstance(value, str):
                value = _json_or_text(value)
            if not spec.accepts(value):
                message = f"must be {PARAM_TYPE_WORDS[spec.type]}, not {given[name]!r}"
                problems.append({"path": f"params.{name}", "message": message})
                continue
            if storable(value)[1]:
                problems.append({"path": f"params.{name}", "message": UNSTORABLE})
                continue
            size = len(msgspec.json.encode(value))
            if size > max_bytes:
                problems.append(
                    {"path": f"params.{name}", "message": f"{size} bytes, more than the {max_bytes} allowed"}
                )
                continue
            values[name] = float(value) if spec.type == "number" else value
        elif spec.required:
            problems.append({"path": f"params.{name}", "message": f"required ({spec.type}) but not given"})
        else:
            values[name] = spec.default
    if not problems and (total := len(msgspec.json.encode(values))) > max_bytes:
        problems.append(
            {"path": "params", "message": f"{total} bytes in all, more than the {max_bytes} allowed"}
        )
    if problems:
        first = problems[0]
        message = f"{first['path']}: {first['message']}"
        if len(problems) > 1:
            message = f"{len(problems)} problems with the params of {what}; first: {message}"
        else:
            message = f"params of {what}: {message}"
        raise Invalid(message, details=problems)
    return values


def _json_or_text(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


UNSTORABLE = "holds a NUL character or a lone surrogate, which no database text can hold"


def param_text(value: ParamValue) -> str:
    """How a param value reads inside argv and env: booleans as ``true``/``false`` and lists as JSON
    text (``["a",1]``), like JSON; other values as ``str`` gives them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return msgspec.json.encode(value).decode()
    return str(value)
