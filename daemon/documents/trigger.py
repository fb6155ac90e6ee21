"""Trigger documents: the raw YAML shape to a ``TriggerSpec``, with every semantic check."""

from __future__ import annotations

from pathlib import PurePosixPath

from msgspec import UNSET

from daemon.documents import names, units
from daemon.documents.paths import child
from daemon.documents.problems import Reporter
from daemon.documents.raw import RawFiles, RawOn, RawTrigger
from daemon.documents.specs import CronSource, EventSource, FilesSource, NatsSource, RunSource, TriggerSpec
from daemon.documents.template import TemplateError, references
from kit.subjects import subject_problem, trigger_subject_problem
from triggers.crontab import cron_trigger, zone

_SOURCES = ("cron", "files", "nats", "run")
_CRON_ONLY = ("timezone", "catchup")


def build_trigger(name: str, raw: RawTrigger, report: Reporter) -> TriggerSpec:
    """The spec of trigger ``name``; each problem found goes to ``report`` (and then the spec, built
    with placeholders where values were bad, is not to be used)."""
    if problem := names.name_problem(raw.pipeline):
        report.add("pipeline", problem)
    for param, value in raw.params.items():
        _check_param(param, value, report)
    return TriggerSpec(
        name=name, pipeline=raw.pipeline, version=raw.version, on=_source(raw.on, report), params=raw.params
    )


def _check_param(name: str, value: object, report: Reporter) -> None:
    path = child("params", name)
    if problem := names.identifier_problem(name):
        report.add(path, problem)
    if not isinstance(value, str):
        return
    try:
        expressions = references(value)
    except TemplateError as exc:
        report.add(path, exc.message)
        return
    for expression in expressions:
        namespace, _, field = expression.partition(".")
        if namespace != "event" or not field:
            report.add(path, f"unknown substitution ${{{expression}}} (use ${{event.FIELD}})")


def _source(on: RawOn, report: Reporter) -> EventSource:
    given = [source for source in _SOURCES if getattr(on, source) is not UNSET]
    if len(given) != 1:
        found = f" (found {', '.join(given)})" if given else ""
        report.add("on", f"needs exactly one of {', '.join(_SOURCES)}{found}")
    if on.cron is UNSET:
        for option in _CRON_ONLY:
            if getattr(on, option) is not UNSET:
                report.add(child("on", option), "goes only with cron")
    if on.cron is not UNSET:
        return _cron(on, report)
    if on.files is not UNSET:
        return _files(on.files, report)
    if on.nats is not UNSET:
        return _nats(on.nats, report)
    if on.run is not UNSET:
        return _run(on.run, report)
    return CronSource(cron="")


def _cron(on: RawOn, report: Reporter) -> CronSource:
    options = {option: getattr(on, option) for option in _CRON_ONLY if getattr(on, option) is not UNSET}
    source = CronSource(cron=str(on.cron), **options)
    timezone = source.timezone
    try:
        zone(timezone)
    except ValueError as exc:
        report.add(child("on", "timezone"), str(exc))
        timezone = "UTC"
    try:
        cron_trigger(source.cron, timezone)
    except ValueError as exc:
        report.add(child("on", "cron"), f"bad cron expression {source.cron!r}: {exc}")
    return source


def _files(raw: RawFiles, report: Reporter) -> FilesSource:
    path = child("on", "files")
    if problem := names.name_problem(raw.datastore):
        report.add(child(path, "datastore"), problem)
    pattern = PurePosixPath(raw.pattern)
    if not raw.pattern.strip() or pattern.is_absolute() or ".." in pattern.parts:
        report.add(child(path, "pattern"), "must be a glob relative to the datastore, without '..'")
    if not raw.events:
        report.add(child(path, "events"), "needs at least one event")
    durations = {}
    for field in ("settle", "batch", "poll_interval"):
        try:
            durations[field] = units.parse_duration(getattr(raw, field))
        except ValueError as exc:
            report.add(child(path, field), str(exc))
            durations[field] = 1.0
    if durations["poll_interval"] == 0:
        report.add(child(path, "poll_interval"), "must be more than 0")
    if raw.notifications is not None and (problem := trigger_subject_problem(raw.notifications.subject)):
        report.add(child(child(path, "notifications"), "subject"), problem)
    return FilesSource(
        datastore=raw.datastore,
        pattern=raw.pattern,
        events=list(dict.fromkeys(raw.events)),
        watch=raw.watch,
        notifications=raw.notifications,
        **durations,
    )


def _nats(source: NatsSource, report: Reporter) -> NatsSource:
    path = child("on", "nats")
    # Through a stream the subject only filters the user's own stream; on core NATS it is what the
    # daemon's connection subscribes to.
    check = subject_problem if source.stream is not None else trigger_subject_problem
    if problem := check(source.subject):
        report.add(child(path, "subject"), problem)
    if source.stream is not None and (problem := names.stream_problem(source.stream)):
        report.add(child(path, "stream"), problem)
    for field in source.match:
        if not all(field.split(".")):
            report.add(child(child(path, "match"), field), "must be a dotted field path, e.g. data.kind")
    return source


def _run(source: RunSource, report: Reporter) -> RunSource:
    path = child("on", "run")
    if problem := names.name_problem(source.pipeline):
        report.add(child(path, "pipeline"), problem)
    if not source.status:
        report.add(child(path, "status"), "needs at least one status")
    return source
