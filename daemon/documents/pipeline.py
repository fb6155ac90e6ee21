"""Pipeline documents: the raw YAML shape to a ``PipelineSpec``, with every semantic check.

Checks run in two passes so that each problem is reported once, at the path where it was written:
each step's own fields and the ``defaults`` are normalised and checked alone (units, names, template
syntax, params), then the defaults are merged into each step and what depends on the other steps is
checked (inputs, outputs and steps referenced, ``after``, cycles). A problem of the second pass in a
field that came from ``defaults`` is reported at ``defaults.…`` and names the step.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

from msgspec import UNSET

from daemon.documents import names, units
from daemon.documents.foreach import ITEM_REFERENCES, build_foreach, input_problem, item_problem
from daemon.documents.graph import dependencies, find_cycle
from daemon.documents.paths import child
from daemon.documents.problems import Reporter
from daemon.documents.raw import RawInput, RawPipeline, RawResources, RawStepFields
from daemon.documents.references import DEFAULT_DATASTORE
from daemon.documents.specs import (
    PARAM_TYPE_WORDS,
    Foreach,
    FromDatastore,
    FromStep,
    InputMode,
    ParamSpec,
    PipelineSpec,
    Resources,
    StepInput,
    StepSpec,
)
from daemon.documents.template import TemplateError, references

_RUN_FIELDS = ("id", "pipeline", "version")
# An input from another step is exactly one reference, in the segment syntax of ``template``.
_STEP_OUTPUT = re.compile(r"\$\{steps\.(?P<step>[A-Za-z0-9_-]+)\.outputs\.(?P<output>[A-Za-z0-9_-]+)\}")
_STEP_NAMESPACES = (
    "params.X, inputs.X, outputs.X, steps.STEP.outputs.X, run.id, run.pipeline, run.version, "
    + ", ".join(ITEM_REFERENCES)
)
_PATH_NAMESPACES = "params.X, run.id, run.pipeline, run.version"
# Merged key by key, the step's keys winning; every other field is taken whole from the step or defaults.
_MERGED_BY_KEY = ("env", "selector")


def build_pipeline(name: str, raw: RawPipeline, report: Reporter) -> PipelineSpec:
    """The spec of pipeline ``name``; each problem found goes to ``report`` (and then the spec, built
    with placeholders where values were bad, is not to be used)."""
    params = {param: _param(param, spec, report) for param, spec in raw.params.items()}
    if raw.source is not None and not raw.source.strip():
        report.add("source", "must not be empty")
    checker = _FieldChecker(params, report)
    defaults = checker.fields(raw.defaults, "defaults") if raw.defaults else _Part({}, "defaults")
    if not raw.steps:
        report.add("steps", "needs at least one step")
    steps = []
    for index, step in enumerate(raw.steps):
        path = child("steps", index)
        foreach = (
            build_foreach(step.foreach, child(path, "foreach"), params, report) if step.foreach else None
        )
        steps.append(_merge(defaults, checker.fields(step, path), step.name, foreach, index, report))
    _check_steps(steps, report)
    spec = PipelineSpec(
        name=name,
        description=raw.description,
        params=params,
        source=raw.source,
        concurrency=raw.concurrency,
        steps=[step.spec for step in steps],
    )
    cycle = find_cycle(dependencies(spec.steps))
    if cycle:
        report.add("steps", "cycle: " + " → ".join(cycle))
    return spec


def _param(name: str, spec: ParamSpec, report: Reporter) -> ParamSpec:
    path = child("params", name)
    if problem := names.identifier_problem(name):
        report.add(path, problem)
    if spec.default is None:
        return spec
    if not spec.accepts(spec.default):
        report.add(child(path, "default"), f"must be {PARAM_TYPE_WORDS[spec.type]}")
    elif spec.type == "number":
        return ParamSpec(type=spec.type, default=float(spec.default), description=spec.description)
    return spec


class _Part:
    """Normalised step fields as written in one place (a step, or ``defaults``), UNSET ones left out."""

    def __init__(self, values: dict[str, Any], path: str) -> None:
        self.values = values
        self.path = path


class _Step:
    """A step with defaults merged in, and where each field (each key for env/selector) was written."""

    def __init__(self, spec: StepSpec, origins: dict[str, str], index: int) -> None:
        self.spec = spec
        self.origins = origins
        self.index = index

    def path(self, field: str, *rest: str | int) -> str:
        """Where ``field`` (then ``rest``) was written: under the step, or under ``defaults``."""
        key = f"{field}.{rest[0]}" if field in _MERGED_BY_KEY and rest else field
        path = child(self.origins.get(key, child("steps", self.index)), field)
        for part in rest:
            path = child(path, part)
        return path

    def note(self, field: str) -> str:
        """A suffix naming the step, for problems of a field that came from ``defaults``."""
        return f" (in step {self.spec.name})" if self.origins.get(field) == "defaults" else ""


def _merge(
    defaults: _Part, own: _Part, name: str, foreach: Foreach | None, index: int, report: Reporter
) -> _Step:
    values: dict[str, Any] = {**defaults.values, **own.values}
    origins = {field: own.path if field in own.values else defaults.path for field in values}
    for field in _MERGED_BY_KEY:
        if field in values:
            values[field] = {**defaults.values.get(field, {}), **own.values.get(field, {})}
            for part in (defaults, own):
                origins.update({f"{field}.{key}": part.path for key in part.values.get(field, {})})
    if "command" not in values:
        report.add(child(own.path, "command"), "missing (set it in the step or in defaults)")
        values["command"] = []
    return _Step(StepSpec(name=name, foreach=foreach, **values), origins, index)


class _FieldChecker:
    """Normalises and checks step fields that can be judged without knowing the other steps."""

    def __init__(self, params: Mapping[str, ParamSpec], report: Reporter) -> None:
        self.params = params
        self.report = report
        self.normalisers: dict[str, Callable[[Any, str], Any]] = {
            "command": self.command,
            "image": self.image,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "resources": self.resources,
            "env": self.env,
            "timeout": self.timeout,
        }

    def fields(self, raw: RawStepFields, path: str) -> _Part:
        values = {}
        for field in RawStepFields.__struct_fields__:
            value = getattr(raw, field)
            if value is not UNSET:
                normalise = self.normalisers.get(field)
                values[field] = normalise(value, child(path, field)) if normalise else value
        return _Part(values, path)

    def command(self, command: list[str], path: str) -> list[str]:
        if not command:
            self.report.add(path, "must not be empty")
        for index, item in enumerate(command):
            self.template(item, child(path, index), step_scoped=True)
        return command

    def image(self, image: str, path: str) -> str:
        if not image.strip():
            self.report.add(path, "must not be empty (leave it out to run a process)")
        return image

    def inputs(self, inputs: dict[str, str | RawInput], path: str) -> dict[str, StepInput]:
        self.env_names([(name, child(path, name)) for name in inputs], "SLUICE_INPUT_")
        return {name: self.input(source, child(path, name)) for name, source in inputs.items()}

    def input(self, source: str | RawInput, path: str) -> StepInput:
        if isinstance(source, str):
            return self.step_output(source, path, "download")
        if source.output is not UNSET:
            for field in ("datastore", "path", "hash"):
                if getattr(source, field) is not UNSET:
                    self.report.add(child(path, field), "goes with datastore, not with output")
            return self.step_output(source.output, child(path, "output"), source.mode)
        for field in ("datastore", "path"):
            if getattr(source, field) is UNSET:
                self.report.add(child(path, field), "missing (or give output: ${steps.STEP.outputs.NAME})")
        datastore = source.datastore if source.datastore is not UNSET else DEFAULT_DATASTORE
        relative = source.path if source.path is not UNSET else ""
        if problem := names.name_problem(datastore):
            self.report.add(child(path, "datastore"), problem)
        location = PurePosixPath(relative)
        if location.is_absolute() or ".." in location.parts:
            self.report.add(child(path, "path"), "must be relative to the datastore, without '..'")
        self.template(relative, child(path, "path"), step_scoped=False)
        hash_ = source.hash if source.hash is not UNSET else "listing"
        return FromDatastore(datastore=datastore, path=relative, hash=hash_, mode=source.mode)

    def step_output(self, reference: str, path: str, mode: InputMode) -> FromStep:
        if found := _STEP_OUTPUT.fullmatch(reference):
            return FromStep(step=found.group("step"), output=found.group("output"), mode=mode)
        self.report.add(path, "must be ${steps.STEP.outputs.NAME} or a mapping with datastore and path")
        return FromStep(step="", output="")

    def outputs(self, outputs: list[str], path: str) -> list[str]:
        self.env_names([(name, child(path, index)) for index, name in enumerate(outputs)], "SLUICE_OUTPUT_")
        for index, name in enumerate(outputs):
            if name == names.LOGS:
                self.report.add(
                    child(path, index), f"{name!r} is reserved (runs/<run>/<step>/logs holds the step's logs)"
                )
        return outputs

    def resources(self, raw: RawResources, path: str) -> Resources:
        cpu = self.unit(units.parse_cpu, raw.cpu, child(path, "cpu"), 1.0)
        memory = self.unit(units.parse_size, raw.memory, child(path, "memory"), 0)
        gpu_memory = None
        if raw.gpu_memory is not None:
            gpu_memory = self.unit(units.parse_size, raw.gpu_memory, child(path, "gpu_memory"), 0)
            if raw.gpu < 1:
                self.report.add(child(path, "gpu_memory"), "needs gpu")
        return Resources(cpu=cpu, memory=memory, gpu=raw.gpu, gpu_memory=gpu_memory)

    def env(self, env: dict[str, str], path: str) -> dict[str, str]:
        for name, value in env.items():
            if problem := names.identifier_problem(name):
                self.report.add(child(path, name), problem)
            self.template(value, child(path, name), step_scoped=True)
        return env

    def timeout(self, timeout: float | str, path: str) -> float:
        seconds = self.unit(units.parse_duration, timeout, path, 1.0)
        if seconds == 0:
            self.report.add(path, "must be more than 0 (leave it out for no limit)")
        return seconds

    def unit(self, parse: Callable[[Any], Any], value: object, path: str, placeholder: Any) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            self.report.add(path, str(exc))
            return placeholder

    def env_names(self, names_at: list[tuple[str, str]], prefix: str) -> None:
        """Names (with their paths) that become ``prefix`` + NAME upper-cased: each must be valid and
        distinct from the others once upper-cased."""
        seen: dict[str, str] = {}
        for name, path in names_at:
            variable = prefix + name.upper()
            if problem := names.identifier_problem(name):
                self.report.add(path, problem)
            elif seen.get(variable) == name:
                self.report.add(path, f"duplicate name {name!r}")
            elif variable in seen:
                self.report.add(path, f"{name!r} and {seen[variable]!r} would both be {variable}")
            seen.setdefault(variable, name)

    def template(self, text: str, path: str, *, step_scoped: bool) -> None:
        """Syntax, namespaces and params of the ``${…}`` in ``text``. Step-scoped texts (argv items,
        env values) may also refer to inputs, outputs and steps; those are only checked for shape
        here, the second pass checks they exist."""
        try:
            expressions = references(text)
        except TemplateError as exc:
            self.report.add(path, exc.message)
            return
        for expression in expressions:
            if problem := self.reference_problem(expression, step_scoped):
                self.report.add(path, problem)

    def reference_problem(self, expression: str, step_scoped: bool) -> str | None:
        parts = expression.split(".")
        if parts[0] == "params" and len(parts) == 2:
            return None if parts[1] in self.params else f"${{{expression}}}: unknown param {parts[1]!r}"
        if parts[0] == "run" and len(parts) == 2 and parts[1] in _RUN_FIELDS:
            return None
        if step_scoped and (
            (parts[0] in ("inputs", "outputs") and len(parts) == 2)
            or (parts[0] == "steps" and len(parts) == 4 and parts[2] == "outputs")
            or expression in ITEM_REFERENCES
        ):
            return None
        allowed = _STEP_NAMESPACES if step_scoped else _PATH_NAMESPACES
        return f"unknown substitution ${{{expression}}} (use {allowed})"


def _check_steps(steps: list[_Step], report: Reporter) -> None:
    """The checks that need the other steps: names, inputs, outputs and steps referenced, ``after``."""
    first_at: dict[str, int] = {}
    for step in steps:
        name_path = child(child("steps", step.index), "name")
        if problem := names.name_problem(step.spec.name):
            report.add(name_path, problem)
        elif step.spec.name in first_at:
            report.add(name_path, f"duplicate step name (first at steps[{first_at[step.spec.name]}])")
        first_at.setdefault(step.spec.name, step.index)
    outputs = {step.spec.name: set(step.spec.outputs) for step in steps}
    for step in steps:
        _check_step(step, outputs, report)


def _check_step(step: _Step, outputs: Mapping[str, set[str]], report: Reporter) -> None:
    spec = step.spec
    if problem := input_problem(spec.foreach, spec.inputs):
        report.add(f"{child('steps', step.index)}.foreach.files.input", problem)
    for name, source in spec.inputs.items():
        if name in spec.outputs:
            report.add(
                step.path("inputs", name), f"input {name!r} has the name of an output{step.note('inputs')}"
            )
        if isinstance(source, FromStep) and source.step:
            problem = _step_output_problem(spec.name, source.step, source.output, outputs)
            if problem:
                report.add(step.path("inputs", name), problem + step.note("inputs"))
    for index, name in enumerate(spec.after):
        if name == spec.name:
            report.add(step.path("after", index), "a step cannot come after itself" + step.note("after"))
        elif name not in outputs:
            report.add(step.path("after", index), f"unknown step {name!r}" + step.note("after"))
    for index, item in enumerate(spec.command):
        for problem in _step_scoped_problems(item, spec, outputs):
            report.add(step.path("command", index), problem + step.note("command"))
    for key, value in spec.env.items():
        for problem in _step_scoped_problems(value, spec, outputs):
            report.add(step.path("env", key), problem + step.note(f"env.{key}"))


def _step_scoped_problems(text: str, spec: StepSpec, outputs: Mapping[str, set[str]]) -> list[str]:
    try:
        expressions = references(text)
    except TemplateError:
        return []  # reported by the first pass
    problems = []
    for expression in expressions:
        parts = expression.split(".")
        if parts[0] == "inputs" and len(parts) == 2 and parts[1] not in spec.inputs:
            problems.append(f"${{{expression}}}: the step has no input {parts[1]!r}")
        elif parts[0] == "outputs" and len(parts) == 2 and parts[1] not in spec.outputs:
            problems.append(f"${{{expression}}}: the step has no output {parts[1]!r}")
        elif parts[0] == "steps" and len(parts) == 4 and parts[2] == "outputs":
            problem = _step_output_problem(spec.name, parts[1], parts[3], outputs)
            if problem:
                problems.append(f"${{{expression}}}: {problem}")
        elif expression in ITEM_REFERENCES and (problem := item_problem(expression, spec.foreach)):
            problems.append(problem)
    return problems


def _step_output_problem(own: str, step: str, output: str, outputs: Mapping[str, set[str]]) -> str | None:
    if step == own:
        return f"a step cannot use its own output this way (use ${{outputs.{output}}})"
    if step not in outputs:
        return f"unknown step {step!r}"
    if output not in outputs[step]:
        return f"step {step!r} has no output {output!r}"
    return None
