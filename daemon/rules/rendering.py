"""What an agent executes: a step's argv, env and paths rendered for one agent (pure; no I/O).

Paths are as the *chosen agent* sees its datastores (its heartbeat's paths override the Datastore
documents'). Each output of step S is the directory ``runs/<run_id>/<S>/<output>`` in the ``default``
datastore — for a reused step, that of the run and step it reuses; an input from a datastore is
``path`` (templated with params and run) under it.

An ``s3`` datastore's root, for an agent with a staging directory, is a directory of that agent for
the step run (``daemon.planning.contexts.Datastores.for_agent``); the assignment carries the store's
location in ``stores`` so that the agent downloads inputs into that root and uploads outputs and the
log from it. An input with ``mode: uri`` on an ``s3`` datastore (a step's output: on an ``s3``
``default``) is its ``s3://`` URI instead (an output's prefix, whose manifests list its files): the
step reads the store itself, and the agent has nothing to download.

A partition of a ``foreach`` step (``daemon.rules.partitions``) is rendered with ``${item…}`` too:
``${item}`` is the shard index, the list item (as a param reads), or the partition's files (JSON list
of paths relative to the input); ``${item.index}`` its index; ``${item.files}`` the paths of its
files under the input, as JSON text, except that an argv item that is exactly ``${item.files}``
becomes one argv item per file (no shell ever reads them).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from daemon.documents.names import LOGS
from daemon.documents.references import DEFAULT_DATASTORE
from daemon.documents.specs import FromStep, OverFiles, PipelineSpec, StepSpec
from daemon.documents.template import TemplateError, render
from daemon.rules.params import param_text
from daemon.rules.partitions import Partition, name_of
from kit.objectstore import S3Location, addressable
from runners.protocol import Assignment, Resources, Upstream


@dataclass(frozen=True, slots=True)
class RunContext:
    """What rendering needs of a run; immutable for the run's life."""

    id: str
    pipeline: str
    version: int
    params: Mapping[str, Any]
    spec: PipelineSpec
    source_digest: str | None
    reused: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Reused step -> (run id, step) whose outputs it links."""
    partitions: Mapping[str, Partition] = field(default_factory=dict)
    """The partitions of its ``foreach`` steps, by step run name (``score[3]``)."""

    def step(self, name: str) -> StepSpec:
        for step in self.spec.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def output(self, step: str, output: str) -> str:
        """Where ``step``'s ``output`` lives, relative to the default datastore."""
        return output_path(*self.origin(step), output)

    def origin(self, step: str) -> tuple[str, str]:
        """The run and step that wrote ``step``'s outputs: those it reuses, or its own."""
        return self.reused.get(step, (self.id, step))


def output_path(run_id: str, step: str, output: str) -> str:
    """An output directory, relative to the default datastore; a partition ``score[3]`` writes its
    part of its step's: ``runs/<run>/score/<output>/part-00003``."""
    name, bracket, index = step.partition("[")
    if bracket:
        return f"runs/{run_id}/{name}/{output}/part-{int(index[:-1]):05d}"
    return f"runs/{run_id}/{step}/{output}"


def log_path(run_id: str, step: str, number: int) -> str:
    """The complete log of attempt ``number``, relative to the default datastore."""
    return f"runs/{run_id}/{step}/{LOGS}/attempt-{number}.log"


def in_datastore(datastores: Mapping[str, str], name: str, relative: str) -> str:
    """``relative`` under datastore ``name``.

    Raises:
        TemplateError: the datastore is unknown, or ``relative`` (templated from params, which may
            come from an event's payload) would leave it: absolute, with ``..``, or with a NUL.
    """
    root = datastores.get(name)
    if root is None:
        raise TemplateError(f"unknown datastore {name!r}")
    if not _stays_inside(relative):
        raise TemplateError(f"path {relative!r} is not inside datastore {name!r}")
    return posixpath.join(root, relative) if relative else root


def _stays_inside(relative: str) -> bool:
    return not relative.startswith("/") and ".." not in relative.split("/") and "\0" not in relative


@dataclass(frozen=True, slots=True)
class RenderedStep:
    """A step rendered for one agent, all but the attempt's own fields."""

    argv: list[str]
    env: dict[str, str]
    inputs: dict[str, str]
    outputs: dict[str, str]
    datastores: dict[str, str]
    """The datastores the step's paths lie in: name -> root as the agent sees it."""
    stores: dict[str, S3Location] = field(default_factory=dict)
    """Those of them that are ``s3`` datastores, by name."""
    upstream: dict[str, Upstream] = field(default_factory=dict)
    """The ``inputs`` that are a step's output, with the run, step and output that wrote them."""


def run_values(run: RunContext) -> dict[str, str]:
    """``params.X`` and ``run.*`` substitutions."""
    values = {f"params.{name}": param_text(value) for name, value in run.params.items()}
    values |= {"run.id": run.id, "run.pipeline": run.pipeline, "run.version": str(run.version)}
    return values


def render_step(
    run: RunContext,
    step: StepSpec,
    datastores: Mapping[str, str],
    partition: Partition | None = None,
    stores: Mapping[str, S3Location] | None = None,
) -> RenderedStep:
    """``step`` of ``run`` with every ``${…}`` replaced, for an agent whose datastores are
    ``datastores`` (name -> local path); for a ``foreach`` step, as ``partition`` of it. ``stores``
    are the ``s3`` datastores (their roots in ``datastores`` are the agent's staging directories).

    Raises:
        TemplateError: a reference without a value, an unknown datastore, or a partition's file
            outside its input.
        ValueError: a partition of a step without ``foreach``.
    """
    stores = stores or {}
    values = run_values(run)
    used = {DEFAULT_DATASTORE}
    inputs: dict[str, str] = {}
    upstream: dict[str, Upstream] = {}
    uris: dict[str, str] = {}
    for name, source in step.inputs.items():
        written: Upstream | None = None
        if isinstance(source, FromStep):
            run_id, origin = run.origin(source.step)
            written = Upstream(run_id=run_id, step=origin, output=source.output)
            datastore, relative = DEFAULT_DATASTORE, output_path(run_id, origin, source.output)
        else:
            datastore, relative = source.datastore, render(source.path, values)
        if (store := stores.get(datastore)) is not None and source.mode == "uri":
            uris[name] = store_uri(store, datastore, relative)
        else:
            if store is not None:
                store_uri(store, datastore, relative)  # the agent downloads it: a key it can name
            inputs[name] = in_datastore(datastores, datastore, relative)
            used.add(datastore)
            if written is not None:
                upstream[name] = written
    run_name = step.name if partition is None else name_of(step.name, partition.index)
    outputs = {
        name: in_datastore(datastores, DEFAULT_DATASTORE, output_path(run.id, run_name, name))
        for name in step.outputs
    }
    values |= {f"inputs.{name}": path for name, path in (inputs | uris).items()}
    values |= {f"outputs.{name}": path for name, path in outputs.items()}
    for other in run.spec.steps:
        for output in other.outputs:
            values[f"steps.{other.name}.outputs.{output}"] = in_datastore(
                datastores, DEFAULT_DATASTORE, run.output(other.name, output)
            )
    if partition is None:
        argv = [render(item, values) for item in step.command]
    else:
        files = partition_files(step, partition, inputs | uris)
        values |= item_values(step, partition, files)
        argv = _expanded_argv(step.command, values, files)
    env = {key: render(value, values) for key, value in step.env.items()}
    env |= {
        "SLUICE_RUN_ID": run.id,
        "SLUICE_PIPELINE": run.pipeline,
        "SLUICE_VERSION": str(run.version),
        "SLUICE_STEP": run_name,
    }
    env |= {f"SLUICE_INPUT_{name.upper()}": path for name, path in (inputs | uris).items()}
    env |= {f"SLUICE_OUTPUT_{name.upper()}": path for name, path in outputs.items()}
    return RenderedStep(
        argv=argv,
        env=env,
        inputs=inputs,
        outputs=outputs,
        datastores={name: datastores[name] for name in sorted(used)},
        stores={name: stores[name] for name in sorted(used) if name in stores},
        upstream=upstream,
    )


def store_uri(store: S3Location, name: str, relative: str) -> str:
    """``s3://bucket/key`` of ``relative`` under the ``s3`` datastore ``name``.

    Raises:
        TemplateError: ``relative`` would leave the datastore (see :func:`in_datastore`), or is no
            key obstore can name (an empty or ``.`` segment, a control character): every read of it
            would fail with a ``ValueError``.
    """
    if not _stays_inside(relative):
        raise TemplateError(f"path {relative!r} is not inside datastore {name!r}")
    key = relative.rstrip("/")
    if key and not addressable(key):
        raise TemplateError(
            f"path {relative!r} in datastore {name!r} is no object key: an empty or '.' part, "
            "or a control character"
        )
    return store.uri(relative)


_ITEM_FILES = "${item.files}"


def partition_files(step: StepSpec, partition: Partition, inputs: Mapping[str, str]) -> list[str]:
    """The paths of ``partition``'s files under the input its step's ``foreach`` partitions (by the
    rendered ``inputs``); none unless the step goes over files."""
    if step.foreach is None:
        raise ValueError(f"step {step.name!r} has no foreach, so no partitions")
    over = step.foreach.over
    if not isinstance(over, OverFiles):
        return []
    for relative in partition.files:
        if not _stays_inside(relative) or not relative:
            raise TemplateError(f"file {relative!r} of partition {partition.index} is not inside its input")
    return [posixpath.join(inputs[over.input], relative) for relative in partition.files]


def item_values(step: StepSpec, partition: Partition, files: Sequence[str]) -> dict[str, str]:
    """The ``item``, ``item.index`` and (over files) ``item.files`` substitutions of ``partition``."""
    values = {"item.index": str(partition.index)}
    if step.foreach is not None and isinstance(step.foreach.over, OverFiles):
        values["item"] = _json(list(partition.files))
        values["item.files"] = _json(list(files))
    else:
        values["item"] = param_text(partition.item)
    return values


def _expanded_argv(command: Sequence[str], values: Mapping[str, str], files: Sequence[str]) -> list[str]:
    argv: list[str] = []
    for item in command:
        if item == _ITEM_FILES and "item.files" in values:
            argv.extend(files)
        else:
            argv.append(render(item, values))
    return argv


def _json(value: list[str]) -> str:
    return msgspec.json.encode(value).decode()


def assignment(
    run: RunContext,
    step: StepSpec,
    rendered: RenderedStep,
    datastores: Mapping[str, str],
    *,
    attempt_id: int,
    number: int,
    gpus: tuple[int, ...],
    name: str | None = None,
) -> Assignment:
    """The wire message for one attempt of ``step`` (of its partition step run ``name``) on the
    agent whose datastores are ``datastores``."""
    name = name or step.name
    resources = step.resources
    return Assignment(
        attempt_id=attempt_id,
        run_id=run.id,
        pipeline=run.pipeline,
        version=run.version,
        step=name,
        number=number,
        argv=rendered.argv,
        env=rendered.env | {"SLUICE_ATTEMPT": str(number)},
        image=step.image,
        resources=Resources(
            cpu=resources.cpu, memory=resources.memory, gpu=resources.gpu, gpu_memory=resources.gpu_memory
        ),
        gpus=list(gpus),
        source_digest=run.source_digest,
        inputs=rendered.inputs,
        upstream=rendered.upstream,
        outputs=rendered.outputs,
        datastores=rendered.datastores,
        stores=rendered.stores,
        log_path=in_datastore(datastores, DEFAULT_DATASTORE, log_path(run.id, name, number)),
        timeout_s=step.timeout,
    )
