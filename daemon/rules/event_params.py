"""From an event to a run's parameters (pure; no I/O): a trigger's ``params`` templated from the
event's fields, coerced to the pipeline version's parameter types and validated against its schema.

Templating (contract §3): ``${event.x}``, dotted ``${event.data.kind}``, ``${event.headers.Nats-Msg-Id}``.
A value that is exactly one reference keeps the field's JSON type (``${event.data.count}`` → 7); a
reference embedded in text becomes text (``day-${event.data.count}`` → ``"day-7"``).

Coercion, after templating, from what events carry to what the param wants: text to an integer,
number or boolean (``"42"`` → 42, ``"true"`` → True); a number, boolean, list or mapping to text for
a string param (JSON text: ``${event.paths}`` of a batch becomes ``'["a", "b"]'``). Text for a string
param is never touched (``"007"`` stays ``"007"``). What cannot be coerced is left as it is, so that
validation names the param and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from daemon.documents.specs import ParamSpec, ParamValue
from daemon.documents.template import TemplateError, references, render
from daemon.errors import Invalid
from daemon.rules.params import DEFAULT_MAX_BYTES, validate_params

_WHOLE = re.compile(r"^\$\{([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\}$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


class Rejected(Invalid):
    """An event whose parameters cannot be made: a missing field, or params that do not validate.
    The message is the reason recorded with the event."""


def lookup(fields: Mapping[str, Any], path: str) -> Any:
    """The value at the dotted ``path`` in ``fields`` (mappings by key, lists by index); raises
    ``KeyError`` naming the first segment that is not there."""
    value: Any = fields
    for position, segment in enumerate(path.split(".")):
        if isinstance(value, Mapping) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            raise KeyError(".".join(path.split(".")[: position + 1]))
    return value


def as_text(value: Any) -> str:
    """How a field reads inside text: text as is, booleans and null like JSON, lists and mappings as
    JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        return msgspec.json.encode(value).decode()
    return str(value)


def _event_value(expression: str, fields: Mapping[str, Any], param: str) -> Any:
    namespace, _, path = expression.partition(".")
    if namespace != "event" or not path:
        raise Rejected(f"params.{param}: unknown substitution ${{{expression}}} (use ${{event.FIELD}})")
    try:
        return lookup(fields, path)
    except KeyError as exc:
        known = ", ".join(sorted(fields)) or "none"
        raise Rejected(
            f"params.{param}: the event has no field {'event.' + exc.args[0]} "
            f"(for ${{{expression}}}; its fields: {known})"
        ) from None


def template(bindings: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """Each binding with its ``${event.…}`` references replaced from ``fields``.

    Raises:
        Rejected: a reference to a field the event lacks (the message names it), or a malformed one.
    """
    values: dict[str, Any] = {}
    for name, binding in bindings.items():
        if not isinstance(binding, str):
            values[name] = binding
            continue
        if whole := _WHOLE.match(binding):
            values[name] = _event_value(whole.group(1), fields, name)
            continue
        try:
            expressions = references(binding)
            found = {
                expression: as_text(_event_value(expression, fields, name)) for expression in expressions
            }
            values[name] = render(binding, found)
        except TemplateError as exc:
            raise Rejected(f"params.{name}: {exc.message}") from None
    return values


def coerce(spec: ParamSpec, value: Any) -> Any:
    """``value`` as the param's type where the conversion is unambiguous, else ``value`` unchanged."""
    if spec.type == "string":
        return value if isinstance(value, str) else as_text(value)
    if isinstance(value, str):
        text = value.strip()
        if spec.type == "integer" and _INTEGER.match(text):
            return int(text)
        if spec.type == "number":
            if _INTEGER.match(text):
                return float(int(text))
            try:
                number = float(text)
            except ValueError:
                return value
            return number if math.isfinite(number) else value
        if spec.type == "boolean":
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
        return value
    if spec.type == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def resolve_params(
    schema: Mapping[str, ParamSpec],
    bindings: Mapping[str, Any],
    fields: Mapping[str, Any],
    *,
    what: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, ParamValue]:
    """The run's params: ``bindings`` (a trigger's ``params``) templated from the event ``fields``,
    coerced to ``schema``'s types, with defaults filled in and validated.

    ``what`` names the target in messages (``pipeline scoring version 3``).

    Raises:
        Rejected: a missing field, or params that do not validate (``details`` as ``validate_params``).
    """
    values = template(bindings, fields)
    coerced = {
        name: coerce(schema[name], value) if name in schema else value for name, value in values.items()
    }
    try:
        return validate_params(schema, coerced, what=what, max_bytes=max_bytes)
    except Invalid as exc:
        raise Rejected(exc.message, details=exc.details) from None
