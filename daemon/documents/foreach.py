"""A step's ``foreach``: its raw YAML shape to a ``Foreach``, and the checks of what it refers to.

Like the other step fields it is checked in two passes (see ``daemon.documents.pipeline``): alone
(one source, its values, the list param of ``items``), then against the step with defaults merged
(the input of ``files``, and the step's ``${item…}`` references).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath

from msgspec import UNSET

from daemon.documents.paths import child
from daemon.documents.problems import Reporter
from daemon.documents.raw import RawFilesOver, RawForeach
from daemon.documents.specs import (
    Foreach,
    FromStep,
    Over,
    OverFiles,
    OverItems,
    OverShards,
    ParamSpec,
    StepInput,
)

SOURCES = ("files", "items", "shards")
ITEM_REFERENCES = ("item", "item.index", "item.files")
_PARAM = re.compile(r"\$\{params\.(?P<name>[A-Za-z0-9_-]+)\}")
_PERCENT = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)%")


def build_foreach(raw: RawForeach, path: str, params: Mapping[str, ParamSpec], report: Reporter) -> Foreach:
    """The ``foreach`` written at ``path``, its problems reported (then it holds placeholders)."""
    # A source whose value was bad was reported, then taken out: it was written all the same.
    written = [
        source
        for source in SOURCES
        if getattr(raw, source) is not UNSET or child(path, source) in report.dropped
    ]
    if len(written) != 1:
        found = f" (found {', '.join(written)})" if written else ""
        report.add(path, f"needs exactly one of {', '.join(SOURCES)}{found}")
    if isinstance(raw.allowed_failures, str) and not _percentage(raw.allowed_failures):
        report.add(
            child(path, "allowed_failures"),
            f"must be a count or a percentage from 0% to 100% such as '10%', not {raw.allowed_failures!r}",
        )
    return Foreach(
        over=_over(raw, path, params, report),
        max_parallel=raw.max_parallel,
        allowed_failures=raw.allowed_failures,
    )


def _over(raw: RawForeach, path: str, params: Mapping[str, ParamSpec], report: Reporter) -> Over:
    if raw.files is not UNSET:
        return _files(raw.files, child(path, "files"), report)
    if raw.items is not UNSET:
        return OverItems(param=_items_param(raw.items, child(path, "items"), params, report))
    if raw.shards is not UNSET:
        return OverShards(count=raw.shards)
    return OverShards(count=1)


def _files(raw: RawFilesOver, path: str, report: Reporter) -> OverFiles:
    pattern = PurePosixPath(raw.pattern)
    if not raw.pattern.strip() or pattern.is_absolute() or ".." in pattern.parts:
        report.add(child(path, "pattern"), "must be a glob relative to the input, without '..'")
    return OverFiles(input=raw.input, pattern=raw.pattern, per=raw.per)


def _items_param(text: str, path: str, params: Mapping[str, ParamSpec], report: Reporter) -> str:
    reference = _PARAM.fullmatch(text)
    if not reference:
        report.add(path, f"must be ${{params.NAME}} naming a list param, not {text!r}")
        return ""
    name = reference.group("name")
    param = params.get(name)
    if param is None:
        report.add(path, f"${{params.{name}}}: unknown param {name!r}")
    elif param.type != "list":
        report.add(path, f"${{params.{name}}}: param {name!r} must be of type list, not {param.type}")
    return name


def _percentage(text: str) -> bool:
    match = _PERCENT.fullmatch(text)
    return bool(match) and float(match.group("number")) <= 100


def input_problem(foreach: Foreach | None, inputs: Mapping[str, StepInput]) -> str | None:
    """What is wrong with the input that a ``files`` foreach partitions: it must be one of the step's
    ``inputs``, read from a datastore (an upstream output's files are not known when the run is made)."""
    if foreach is None or not isinstance(foreach.over, OverFiles):
        return None
    name = foreach.over.input
    source = inputs.get(name)
    if source is None:
        return f"the step has no input {name!r} (its inputs: {', '.join(sorted(inputs)) or 'none'})"
    if isinstance(source, FromStep):
        return f"input {name!r} is an output of step {source.step!r}, not read from a datastore"
    return None


def item_problem(expression: str, foreach: Foreach | None) -> str | None:
    """What is wrong with ``${item…}`` (one of ``ITEM_REFERENCES``) in a step whose ``foreach`` this is."""
    if foreach is None:
        return f"${{{expression}}}: the step has no foreach"
    if expression == "item.files" and not isinstance(foreach.over, OverFiles):
        return (
            f"${{{expression}}}: the step's foreach is over {foreach.over.__struct_config__.tag}, not files"
        )
    return None
