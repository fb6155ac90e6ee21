"""What a step's fingerprint is made of, and what changed between two of them (pure; no I/O).

A step's *components* are named parts, each a short digest or value:

- ``command``, ``env``, ``image``, ``outputs``: the step as written — argv and env *templates* (the
  paths substituted into them differ per run; what lies behind a path is an input), the image
  reference with the digest agents last reported running for it (a tag moved in the registry is
  seen once an agent has run the new image: pin images by digest where that matters), the output
  names;
- ``source``: the version's source snapshot digest;
- ``parameter <name>``: each parameter the step uses (in its command, env or input paths);
- ``run <field>``: ``${run.pipeline}``/``${run.version}``/``${run.id}`` where used (a step using the
  run id is different in every run: it is never reused);
- ``input <name>``: each input's fingerprint — an upstream step's fingerprint with the output's name
  (its outputs are a function of it), or a datastore path's data fingerprint; ``after <step>``:
  the fingerprint of a step waited for without data (its effect may be what this step reads). A
  step's own fingerprint stands for its outputs downstream, so a whole run's fingerprints are known
  before any step runs.

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
from daemon.rules.params import param_text

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
    upstream: dict[str, tuple[str, str | None]]
    """Component (``input features``, ``input steps.S.outputs.O``, ``after S``) -> the upstream step
    and output it stands for (no output for an ``after`` edge: the step's whole effect)."""
    data: dict[str, FromDatastore]
    """Component (``input raw``) -> the datastore input it stands for."""


def shape_of(step: StepSpec) -> StepShape:
    used = frozenset(expression for text in templates(step) for expression in references(text))
    upstream: dict[str, tuple[str, str | None]] = {}
    data: dict[str, FromDatastore] = {}
    for name, source in step.inputs.items():
        if isinstance(source, FromStep):
            upstream[f"input {name}"] = (source.step, source.output)
        else:
            data[f"input {name}"] = source
    for expression in used:
        parts = expression.split(".")
        if len(parts) == 4 and parts[0] == "steps" and parts[2] == "outputs":
            upstream[f"input {expression}"] = (parts[1], parts[3])
    for name in step.after:
        upstream[f"after {name}"] = (name, None)
    written = {
        "command": digest(step.command),
        "env": digest(step.env),
        "image": digest(step.image),
        "outputs": digest(step.outputs),
    }
    return StepShape(written, used, upstream, data)


def step_components(
    shape: StepShape,
    *,
    source_digest: str | None,
    params: Mapping[str, Any],
    run: Mapping[str, str],
    upstream: Mapping[str, str],
    data: Mapping[str, str],
    image_digest: str | None = None,
) -> dict[str, str]:
    """The components of a step (whose shape is ``shape``) in one run.

    ``run`` holds the ``run.*`` values; ``upstream`` each upstream step's fingerprint as the steps
    below it see it; ``data`` each datastore input's data fingerprint, by component;
    ``image_digest`` the digest last reported for the step's image, when one was.
    """
    components = shape.written | {"source": source_digest or "none"}
    if image_digest is not None:
        components["image"] = digest([shape.written["image"], image_digest])
    for expression in shape.references:
        kind, _, name = expression.partition(".")
        if kind == "params" and name in params:
            components[f"parameter {name}"] = digest(param_text(params[name]))
        elif kind == "run" and name in RUN_FIELDS:
            components[f"run {name}"] = run.get(name) or "unknown"
    for component, (step, output) in shape.upstream.items():
        components[component] = upstream[step] if output is None else f"{upstream[step]} {output}"
    for component in shape.data:
        components[component] = data[component]
    return components


def fingerprint(components: Mapping[str, str]) -> str:
    payload = msgspec.json.encode([FORMAT, sorted(components.items())])
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def changed(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """The components that differ (added, removed or changed), in a stable order: what a user reads
    as "parameter date, input raw changed"."""
    names = set(before) | set(after)
    return sorted(name for name in names if before.get(name) != after.get(name))
