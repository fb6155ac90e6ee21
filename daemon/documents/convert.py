"""Structural conversion of a document's values with msgspec, its errors turned into problems.

msgspec reports the first structural error of a value with a JSONPath-like location, writing a dict
key as ``[...]``. The key is recovered here: msgspec reads a dict in order and stops at the first bad
entry, so the bad entry is the first one whose prefix of the dict fails with the same error.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from daemon.documents.paths import child
from daemon.documents.problems import Reporter

T = TypeVar("T")

MAX_STRUCTURAL_PROBLEMS = 20
_LOCATED = re.compile(r"^(?P<message>.*) - at (?:`key` in )?`\$(?P<path>[^`]*)`$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<field>[^`]+)`$")
_ELLIPSIS = "..."
_TYPE = re.compile(r"`([^`]+)`")
_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}

Segment = str | int


def convert(value: object, type_: type[T], report: Reporter, base: str = "") -> T | None:
    """``value`` converted to ``type_`` strictly, or ``None`` after reporting its structural problems
    (at ``base`` + their path inside ``value``).

    msgspec stops at the first problem. So that a user sees them all at once, a bad mapping entry is
    reported, taken out, and the conversion tried again; problems that later checks would find at a
    path taken out are not reported (``Reporter.drop``). A missing field or a bad list item ends it.
    """
    for _ in range(MAX_STRUCTURAL_PROBLEMS):
        try:
            return msgspec.convert(value, type_, strict=True)
        except msgspec.ValidationError as exc:
            path, message, removable = _locate(value, type_, str(exc))
            report.add(_join(base, path), message)
            if not removable:
                return None
            report.drop(_join(base, path))
            value = _without(value, path)
    return None


def _locate(value: object, type_: type, error: str) -> tuple[list[Segment], str, bool]:
    """Where ``error`` is in ``value``, what it says, and whether it is a mapping entry that can be
    taken out to look for more problems."""
    located = _LOCATED.match(error)
    if not located:
        segments: list[Segment] = []
        message = error
    else:
        message = located.group("message")
        segments = _resolve_keys(value, type_, error, _parse(located.group("path")))
    field = _FIELD.match(message)
    if field:
        segments.append(field.group("field"))
        unknown = "unknown" in message
        return segments, "unknown field" if unknown else "missing", unknown
    removable = bool(segments) and isinstance(segments[-1], str) and segments[-1] != _ELLIPSIS
    return segments, _TYPE.sub(_type_words, message[:1].lower() + message[1:]), removable


def _type_words(match: re.Match[str]) -> str:
    """msgspec's `str | object` as "a string or a mapping"."""
    return " or ".join(_TYPE_WORDS.get(name, name) for name in match.group(1).split(" | "))


def _parse(path: str) -> list[Segment]:
    segments: list[Segment] = []
    for key, index in _SEGMENT.findall(path):
        segments.append(key or (index if index == _ELLIPSIS else int(index)))
    return segments


def _resolve_keys(value: object, type_: type, error: str, segments: list[Segment]) -> list[Segment]:
    """``segments`` with each ``...`` replaced by the dict key that gives ``error``; cut short at
    one that cannot be resolved."""
    for position, segment in enumerate(segments):
        if segment != _ELLIPSIS:
            continue
        container = _at(value, segments[:position])
        key = _failing_key(value, type_, error, segments[:position], container)
        if key is None:
            return segments[:position]
        segments[position] = key
    return segments


def _failing_key(value: object, type_: type, error: str, at: list[Segment], container: object) -> str | None:
    if not isinstance(container, dict):
        return None
    keys = list(container)
    for count, key in enumerate(keys, start=1):
        prefix = {name: container[name] for name in keys[:count]}
        try:
            msgspec.convert(_replace(value, at, prefix), type_, strict=True)
        except msgspec.ValidationError as exc:
            if str(exc) == error:
                return key
    return None


def _at(value: Any, segments: list[Segment]) -> Any:
    for segment in segments:
        value = value[segment]
    return value


def _replace(value: Any, segments: list[Segment], new: object) -> Any:
    """A copy of ``value`` with the item at ``segments`` set to ``new``, sharing what is not on the way."""
    if not segments:
        return new
    head, rest = segments[0], segments[1:]
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = _replace(value[head], rest, new)
    return copy


def _without(value: Any, segments: list[Segment]) -> Any:
    """A copy of ``value`` without the mapping entry at ``segments``."""
    container = dict(_at(value, segments[:-1]))
    del container[segments[-1]]
    return _replace(value, segments[:-1], container)


def _join(base: str, segments: list[Segment]) -> str:
    path = base
    for segment in segments:
        path = child(path, segment if isinstance(segment, int) else str(segment))
    return path
