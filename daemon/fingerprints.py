"""What a step's fingerprint is made of, and what changed between two of them (pure; no I/O).

A step's *components* are named parts, each a short digest or value:

- ``command``, ``env``, ``image``, ``outputs``: the step as written — argv and env *templates* (the
  paths substituted into them differ per run; what lies behind a path is an input), the image
  reference as written (a moved tag is not seen: pin images by digest where that matters), the
  output names;
- ``source``: the version's source snapshot digest;
- ``parameter <name>``: each parameter the step uses (in its command, env or input paths);
- ``run <field>``: ``${run.pipeline}``/``${run.version}``/``${run.id}`` where used (a step using the
  run id is different in every run: it is never reused);
- ``input <name>``: each input's fingerprint — an upstream step's fingerprint (its outputs are a
  function of it), or a datastore path's data fingerprint. A step's own fingerprint stands for its
  outputs downstream, so a whole run's fingerprints are known before any step runs.

Resources, selectors, retries and timeouts are left out: they change where and how a step runs, not
what it computes. The fingerprint is the sha256 of the sorted components.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from daemon.documents.specs import FromDatastore, FromStep, StepSpec
from daemon.documents.template import references
from daemon.params import param_text

FORMAT = "sluice-step-fingerprint/1"
"""Hashed first: bump it when what goes into a fingerprint changes, so that old ones never match."""

RUN_FIELDS = ("pipeline", "version", "id")


def digest(value: Any) -> str:
    """A short stable digest of a JSON-able value (enough to tell components apart)."""
    return hashlib.sha256(msgspec.json.encode(value, order="sorted")).hexdigest()[:16]


def templates(step: StepSpec) -> Iterable[str]:
    """Every text of ``step`` that may hold ``${…}``: argv items, env values, datastore input paths."""
    yield from step.command
    yield from step.env.values()
    for source in step.inputs.values():
        if isinstance(source, FromDatastore):
            yield source.path


@dataclass(frozen=True, slots=True)
class StepShape:
    """What of a step's components depends on the step alone: computed once per version's step."""

    written: dict[str, str]
    """``command``, ``env``, ``image``, ``outputs`` digests."""
    references: frozenset[str]
    upstream: dict[str, str]
    """Input name or ``steps.S.outputs.O`` expression -> the upstream step whose fingerprint stands
    for it."""


def shape_of(step: StepSpec) -> StepShape:
    used = frozenset(expression for text in templates(step) for expression in references(text))
    upstream = {name: source.step for name, source in step.inputs.items() if isinstance(source, FromStep)}
    for expression in used:
        parts = expression.split(".")
        if len(parts) == 4 and parts[0] == "steps" and parts[2] == "outputs":
            upstream[expression] = parts[1]
    written = {
        "command": digest(step.command),
        "env": digest(step.env),
        "image": digest(step.image),
        "outputs": digest(step.outputs),
    }
    return StepShape(written, used, upstream)


def step_components(
    step: StepSpec,
    shape: StepShape,
    *,
    source_digest: str | None,
    params: Mapping[str, Any],
    run: Mapping[str, str],
    inputs: Mapping[str, str],
) -> dict[str, str]:
    """The components of ``step`` (whose shape is ``shape``) in one run.

    ``run`` holds the ``run.*`` values; ``inputs`` holds each input's fingerprint by name, and each
    ``steps.S.outputs.O`` reference's upstream fingerprint under that expression.
    """
    components = shape.written | {"source": source_digest or "none"}
    for expression in sorted(shape.references):
        kind, _, name = expression.partition(".")
        if kind == "params" and name in params:
            components[f"parameter {name}"] = digest(param_text(params[name]))
        elif kind == "run" and name in RUN_FIELDS:
            components[f"run {name}"] = run.get(name) or "unknown"
        elif kind == "steps" and expression in inputs:
            components[f"input {expression}"] = inputs[expression]
    for name in step.inputs:
        components[f"input {name}"] = inputs[name]
    return components


def fingerprint(components: Mapping[str, str]) -> str:
    payload = msgspec.json.encode([FORMAT, sorted(components.items())])
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def changed(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """The components that differ (added, removed or changed), in a stable order: what a user reads
    as "parameter date, input raw changed"."""
    names = set(before) | set(after)
    return sorted(name for name in names if before.get(name) != after.get(name))
