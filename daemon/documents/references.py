"""References from documents to other documents: datastores, pipelines and their params."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from daemon.documents.paths import child, line_for
from daemon.documents.problems import Problem
from daemon.documents.specs import (
    PARAM_TYPE_WORDS,
    DatastoreSpec,
    Document,
    FilesSource,
    FromDatastore,
    ParamSpec,
    PipelineSpec,
    RunSource,
    TriggerSpec,
)

DEFAULT_DATASTORE = "default"

PipelineParams = Callable[[str, int | None], Mapping[str, ParamSpec] | None]
Report = Callable[[str, str], None]


def check_references(
    docs: Sequence[Document],
    *,
    datastores: Collection[str],
    pipeline_params: PipelineParams,
) -> list[Problem]:
    """Problems with what ``docs`` refer to, each at the path of the reference.

    A datastore must be ``default``, in ``datastores`` (those stored) or a Datastore document of
    ``docs``. A trigger's pipeline (and a ``run`` source's) must be a Pipeline document of ``docs`` or
    known to ``pipeline_params(name, version)``, which returns that version's params (the default
    version's when ``version`` is None) or None when unknown. A pinned version is looked up first;
    a pipeline of ``docs`` is taken as what it will be after applying them. Trigger params must be
    params of the pipeline, every required param must be bound, and a non-text value must have the
    param's type (text may hold ``${event.…}``, so it is checked when an event comes).
    """
    known_datastores = {DEFAULT_DATASTORE, *datastores}
    known_datastores.update(doc.name for doc in docs if isinstance(doc.spec, DatastoreSpec))
    batch_params = {doc.name: doc.spec.params for doc in docs if isinstance(doc.spec, PipelineSpec)}

    def params_of(name: str, version: int | None) -> Mapping[str, ParamSpec] | None:
        if version is not None and (stored := pipeline_params(name, version)) is not None:
            return stored
        if name in batch_params:
            return batch_params[name]
        return pipeline_params(name, version)

    problems: list[Problem] = []
    for doc in docs:
        report = _reporter(doc, problems)
        if isinstance(doc.spec, PipelineSpec):
            _check_pipeline(doc.spec, doc.lines, known_datastores, report)
        elif isinstance(doc.spec, TriggerSpec):
            _check_trigger(doc.spec, known_datastores, params_of, pipeline_params, report)
    return problems


def _reporter(doc: Document, problems: list[Problem]) -> Report:
    def report(path: str, message: str) -> None:
        problems.append(Problem(doc.file, line_for(doc.lines, path, doc.line), path, message))

    return report


def _check_pipeline(
    spec: PipelineSpec, lines: Mapping[str, int], datastores: Collection[str], report: Report
) -> None:
    for index, step in enumerate(spec.steps):
        # A step without inputs of its own took them from ``defaults``: report them there, naming the step.
        inputs, note = child(child("steps", index), "inputs"), ""
        if inputs not in lines and "defaults.inputs" in lines:
            inputs, note = "defaults.inputs", f" (in step {step.name})"
        for name, source in step.inputs.items():
            if isinstance(source, FromDatastore) and source.datastore not in datastores:
                message = f"unknown datastore {source.datastore!r}{note}"
                report(child(child(inputs, name), "datastore"), message)


def _check_trigger(
    spec: TriggerSpec,
    datastores: Collection[str],
    params_of: PipelineParams,
    pipeline_params: PipelineParams,
    report: Report,
) -> None:
    on = spec.on
    if isinstance(on, FilesSource) and on.datastore not in datastores:
        report("on.files.datastore", f"unknown datastore {on.datastore!r}")
    if isinstance(on, RunSource) and params_of(on.pipeline, None) is None:
        report("on.run.pipeline", f"unknown pipeline {on.pipeline!r}")
    params = params_of(spec.pipeline, spec.version)
    if params is None:
        if spec.version is not None and pipeline_params(spec.pipeline, None) is not None:
            report("version", f"pipeline {spec.pipeline!r} has no version {spec.version}")
        else:
            report("pipeline", f"unknown pipeline {spec.pipeline!r}")
        return
    for name, value in spec.params.items():
        param = params.get(name)
        if param is None:
            report(child("params", name), f"pipeline {spec.pipeline!r} has no param {name!r}")
        elif not isinstance(value, str) and not param.accepts(value):
            report(child("params", name), f"pipeline {spec.pipeline!r} wants {PARAM_TYPE_WORDS[param.type]}")
    for name, param in params.items():
        if param.required and name not in spec.params:
            report(child("params", name), f"required by pipeline {spec.pipeline!r}, not bound")
