"""What an agent executes: a step's argv, env and paths rendered for one agent (pure; no I/O).

Paths are as the *chosen agent* sees its datastores (its heartbeat's paths override the Datastore
documents'). Each output of step S is the directory ``runs/<run_id>/<S>/<output>`` in the ``default``
datastore — for a reused step, that of the run and step it reuses; an input from a datastore is
``path`` (templated with params and run) under it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from daemon.documents.references import DEFAULT_DATASTORE
from daemon.documents.specs import FromDatastore, FromStep, PipelineSpec, StepSpec
from daemon.documents.template import TemplateError, render
from daemon.rules.params import param_text
from runners.protocol import Assignment, Resources


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

    def step(self, name: str) -> StepSpec:
        for step in self.spec.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def output(self, step: str, output: str) -> str:
        """Where ``step``'s ``output`` lives, relative to the default datastore."""
        run_id, origin = self.reused.get(step, (self.id, step))
        return output_path(run_id, origin, output)


def output_path(run_id: str, step: str, output: str) -> str:
    """An output directory, relative to the default datastore."""
    return f"runs/{run_id}/{step}/{output}"


def log_path(run_id: str, step: str, number: int) -> str:
    """The complete log of attempt ``number``, relative to the default datastore."""
    return f"runs/{run_id}/{step}/logs/attempt-{number}.log"


def in_datastore(datastores: Mapping[str, str], name: str, relative: str) -> str:
    """``relative`` under datastore ``name``.

    Raises:
        TemplateError: the datastore is unknown, or ``relative`` (templated from params, which may
            come from an event's payload) would leave it: absolute, with ``..``, or with a NUL.
    """
    root = datastores.get(name)
    if root is None:
        raise TemplateError(f"unknown datastore {name!r}")
    if relative.startswith("/") or ".." in relative.split("/") or "\0" in relative:
        raise TemplateError(f"path {relative!r} is not inside datastore {name!r}")
    return posixpath.join(root, relative) if relative else root


@dataclass(frozen=True, slots=True)
class RenderedStep:
    """A step rendered for one agent, all but the attempt's own fields."""

    argv: list[str]
    env: dict[str, str]
    inputs: dict[str, str]
    outputs: dict[str, str]
    datastores: dict[str, str]
    """The datastores the step's paths lie in: name -> root as the agent sees it."""


def run_values(run: RunContext) -> dict[str, str]:
    """``params.X`` and ``run.*`` substitutions."""
    values = {f"params.{name}": param_text(value) for name, value in run.params.items()}
    values |= {"run.id": run.id, "run.pipeline": run.pipeline, "run.version": str(run.version)}
    return values


def render_step(run: RunContext, step: StepSpec, datastores: Mapping[str, str]) -> RenderedStep:
    """``step`` of ``run`` with every ``${…}`` replaced, for an agent whose datastores are
    ``datastores`` (name -> local path).

    Raises:
        TemplateError: a reference without a value, or an unknown datastore.
    """
    values = run_values(run)
    used = {DEFAULT_DATASTORE}
    inputs: dict[str, str] = {}
    for name, source in step.inputs.items():
        if isinstance(source, FromStep):
            inputs[name] = in_datastore(datastores, DEFAULT_DATASTORE, run.output(source.step, source.output))
        elif isinstance(source, FromDatastore):
            inputs[name] = in_datastore(datastores, source.datastore, render(source.path, values))
            used.add(source.datastore)
    outputs = {
        name: in_datastore(datastores, DEFAULT_DATASTORE, output_path(run.id, step.name, name))
        for name in step.outputs
    }
    values |= {f"inputs.{name}": path for name, path in inputs.items()}
    values |= {f"outputs.{name}": path for name, path in outputs.items()}
    for other in run.spec.steps:
        for output in other.outputs:
            values[f"steps.{other.name}.outputs.{output}"] = in_datastore(
                datastores, DEFAULT_DATASTORE, run.output(other.name, output)
            )
    env = {key: render(value, values) for key, value in step.env.items()}
    env |= {
        "SLUICE_RUN_ID": run.id,
        "SLUICE_PIPELINE": run.pipeline,
        "SLUICE_VERSION": str(run.version),
        "SLUICE_STEP": step.name,
    }
    env |= {f"SLUICE_INPUT_{name.upper()}": path for name, path in inputs.items()}
    env |= {f"SLUICE_OUTPUT_{name.upper()}": path for name, path in outputs.items()}
    return RenderedStep(
        argv=[render(item, values) for item in step.command],
        env=env,
        inputs=inputs,
        outputs=outputs,
        datastores={name: datastores[name] for name in sorted(used)},
    )


def assignment(
    run: RunContext,
    step: StepSpec,
    rendered: RenderedStep,
    datastores: Mapping[str, str],
    *,
    attempt_id: int,
    number: int,
    gpus: tuple[int, ...],
) -> Assignment:
    """The wire message for one attempt of ``step`` on the agent whose datastores are ``datastores``."""
    resources = step.resources
    return Assignment(
        attempt_id=attempt_id,
        run_id=run.id,
        pipeline=run.pipeline,
        version=run.version,
        step=step.name,
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
        outputs=rendered.outputs,
        datastores=rendered.datastores,
        log_path=in_datastore(datastores, DEFAULT_DATASTORE, log_path(run.id, step.name, number)),
        timeout_s=step.timeout,
    )
