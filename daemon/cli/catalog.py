"""The catalog commands: ``apply``, pipelines and versions, triggers, datastores (contract §2).

Each command is a thin client of the daemon's HTTP API (contract §4): it validates what it can
locally, sends one or a few requests, and prints a table, one line per item, or ``--json``.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import click
import msgspec

from daemon.cli import output
from daemon.cli.http import UPLOAD_TIMEOUT, ApiClient, ApiError, BadAnswer, path
from daemon.config import Settings
from daemon.documents import Document, SourceText, parse_documents
from daemon.documents.source import Snapshot, SourceError, snapshot_directory
from daemon.errors import BadRequest, Invalid
from daemon.limits import INT32_MAX

STDIN = "-"
STDIN_NAME = "<stdin>"
YAML_SUFFIXES = (".yaml", ".yml")

json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of text.")


def register(group: click.Group) -> None:
    """Add the catalog commands to the ``sluice`` group."""
    for command in (apply, pipelines, versions, default, deprecate, disable, enable, triggers, datastores):
        group.add_command(command)


def _client() -> ApiClient:
    return ApiClient.from_settings(Settings.from_env())


# --- records as the CLI reads them; unknown fields are ignored, missing ones are a bad answer ---


class _AbstractStruct(msgspec.structs.StructMeta, abc.ABCMeta):
    """A struct type that may declare abstract methods (``abc``): it cannot be made until they are."""


class Row(msgspec.Struct, metaclass=_AbstractStruct):
    """One item of an API list, printable as a table row under ``COLUMNS``."""

    COLUMNS: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def cells(self) -> tuple[str, ...]:
        """The row's cells, one per column of ``COLUMNS``."""


class PipelineRow(Row):
    COLUMNS = ("NAME", "DEFAULT", "LATEST", "VERSIONS", "UPDATED")
    name: str
    default_version: int | None = None
    latest_version: int | None = None
    versions: int | None = None
    version_count: int | None = None
    updated_at: str | None = None

    def cells(self) -> tuple[str, ...]:
        count = self.versions if self.versions is not None else self.version_count
        return (
            self.name,
            _number(self.default_version),
            _number(self.latest_version),
            _number(count),
            output.format_time(self.updated_at),
        )


class VersionRow(Row):
    COLUMNS = ("VERSION", "STATUS", "DEFAULT", "DIGEST", "CREATED")
    version: int
    status: str
    is_default: bool
    digest: str
    created_at: str | None = None

    def cells(self) -> tuple[str, ...]:
        return (
            str(self.version),
            self.status,
            "*" if self.is_default else "",
            self.digest.removeprefix("sha256:")[:12],
            output.format_time(self.created_at),
        )


class TriggerRow(Row):
    COLUMNS = ("NAME", "PIPELINE", "VERSION", "SOURCE", "STATE", "LAST EVENT", "DETAIL")
    name: str
    pipeline: str
    source: str
    paused: bool
    version: int | None = None
    last_event_at: str | None = None
    status: dict[str, Any] = {}

    def cells(self) -> tuple[str, ...]:
        return (
            self.name,
            self.pipeline,
            "default" if self.version is None else str(self.version),
            self.source,
            "paused" if self.paused else "active",
            output.format_time(self.last_event_at),
            self.detail(),
        )

    def detail(self) -> str:
        """The one thing to know about the trigger's source now: an error first, else where it
        stands (next cron fire, watch mode, consumer lag, or the daemon that runs it)."""
        status = self.status
        if status.get("error"):
            return f"error: {status['error']}"
        if status.get("standby"):
            return f"runs on {status.get('leader') or 'the leading daemon'}"
        if status.get("next_fire"):
            return f"next {output.format_time(status['next_fire'])}"
        if status.get("watch"):
            return f"{status['watch']}, {status.get('pending') or 0} settling"
        if status.get("consumer_lag") is not None:
            return f"lag {status['consumer_lag']}"
        return ""


class EventRow(Row):
    COLUMNS = ("RECEIVED", "OUTCOME", "RUN", "REASON")
    outcome: str
    received_at: str | None = None
    run_id: str | None = None
    reason: str | None = None

    def cells(self) -> tuple[str, ...]:
        return (output.format_time(self.received_at), self.outcome, self.run_id or "-", self.reason or "")


class DatastoreRow(Row):
    COLUMNS = ("NAME", "TYPE", "PATH")
    name: str
    type: str
    path: str | None = None
    spec: dict[str, Any] = {}

    def cells(self) -> tuple[str, ...]:
        return (self.name, self.type, self.path or str(self.spec.get("path", "-")))


class Applied(msgspec.Struct):
    """What ``POST /apply`` did with one document."""

    kind: str
    name: str
    action: str
    version: int | None = None

    def line(self) -> str:
        """``pipeline/x published v2``, ``pipeline/x unchanged (v1)``, ``trigger/y created`` …"""
        ref = f"{self.kind.lower()}/{self.name}"
        if self.action == "published":
            return f"{ref} published v{self.version}"
        if self.action == "unchanged" and self.version is not None:
            return f"{ref} unchanged (v{self.version})"
        return f"{ref} {self.action}"


class AppliedAnswer(msgspec.Struct):
    items: list[Applied]


class Page(msgspec.Struct):
    items: list[dict[str, Any]]
    next_cursor: str | None = None


R = TypeVar("R")


def _convert(data: Any, type_: type[R]) -> R:
    """``data`` from the API as ``type_``; a shape the CLI cannot read is a failed operation."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as error:
        raise BadAnswer(f"the Sluice API answered an unexpected shape: {error}") from None


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def _fetch_all(client: ApiClient, api_path: str) -> list[dict[str, Any]]:
    """Every item of a paged list, following ``next_cursor``."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = _convert(client.request("GET", api_path, query={"cursor": cursor} if cursor else None), Page)
        items.extend(page.items)
        if not page.next_cursor:
            return items
        if page.next_cursor == cursor:
            raise BadAnswer(f"the Sluice API repeated the cursor of {api_path}")
        cursor = page.next_cursor


def _show_list(api_path: str, row: type[Row], *, as_json: bool, empty: str) -> None:
    items = _fetch_all(_client(), api_path)
    if as_json:
        output.print_json({"items": items})
    else:
        output.print_table(row.COLUMNS, (item.cells() for item in _convert(items, list[row])), empty=empty)


def _done(answer: Any, *, as_json: bool, line: str) -> None:
    """End an action: the API's answer with ``--json``, else one confirmation line."""
    if as_json:
        output.print_json(answer)
    else:
        click.echo(line)


class VersionNumber(click.ParamType):
    """A positive version number, written ``3`` or ``v3``."""

    name = "version"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        digits = str(value).strip().lower().removeprefix("v")
        if digits.isdecimal() and 1 <= int(digits) <= INT32_MAX:
            return int(digits)
        self.fail(f"{value!r} is not a version number (write 3 or v3, at most {INT32_MAX})", param, ctx)


VERSION = VersionNumber()


# --- apply ---


@click.command()
@click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, allow_dash=True),
    help="A YAML file, a directory of *.yaml/*.yml files, or - for stdin. Repeatable.",
)
@click.option(
    "--no-default", is_flag=True, help="Publish new pipeline versions without making them the default."
)
@json_option
@output.reports_errors
def apply(paths: tuple[str, ...], no_default: bool, as_json: bool) -> None:
    """Validate and apply Pipeline, Trigger and Datastore documents.

    Everything is validated before anything is applied; `source:` directories are snapshotted and
    uploaded first. Prints one line per document.
    """
    texts = [text for given in paths for text in _read(given)]
    documents = parse_documents(texts)
    if not documents:
        raise BadRequest(f"no documents in {', '.join(paths)}")
    snapshots = _snapshot_sources(documents)
    client = _client()
    _upload_missing(client, snapshots)
    answer = client.request("POST", "/apply", json=_apply_body(texts, snapshots, make_default=not no_default))
    if as_json:
        output.print_json(answer)
        return
    for item in _convert(answer, AppliedAnswer).items:
        click.echo(item.line())


def _read(given: str) -> list[SourceText]:
    """The texts ``-f`` names: stdin, one file, or a directory's YAML files (sorted, not recursive)."""
    if given == STDIN:
        return [SourceText(file=STDIN_NAME, text=sys.stdin.read())]
    location = Path(given)
    if not location.is_dir():
        return [SourceText(file=given, text=_read_file(location))]
    files = sorted(child for child in location.iterdir() if child.suffix in YAML_SUFFIXES and child.is_file())
    if not files:
        raise BadRequest(f"{given} holds no *.yaml or *.yml files")
    return [SourceText(file=str(file), text=_read_file(file)) for file in files]


def _read_file(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{file} is not UTF-8 text") from None
    except OSError as error:
        raise BadRequest(f"cannot read {file}: {error.strerror}") from None


def _snapshot_sources(documents: Sequence[Document]) -> list[tuple[Document, Snapshot]]:
    """A snapshot of the ``source`` directory of each Pipeline that has one.

    ``source`` is relative to the directory of its file (to the working directory for stdin).
    """
    snapshots = []
    for doc in documents:
        if doc.kind != "Pipeline" or not doc.spec.source:
            continue
        base = Path.cwd() if doc.file == STDIN_NAME else Path(doc.file).parent
        try:
            snapshots.append((doc, snapshot_directory(base / doc.spec.source)))
        except SourceError as error:
            problem = {"file": doc.file, "line": doc.line, "path": "source", "message": error.message}
            raise Invalid(error.message, details=[problem]) from None
    return snapshots


def _upload_missing(client: ApiClient, snapshots: Sequence[tuple[Document, Snapshot]]) -> None:
    """Upload each distinct snapshot the daemon does not have yet."""
    for doc, snapshot in {snapshot.digest: (doc, snapshot) for doc, snapshot in snapshots}.values():
        if not _has_source(client, snapshot.digest):
            _upload_source(client, snapshot, label=doc.spec.source)


def _has_source(client: ApiClient, digest: str) -> bool:
    try:
        client.request("HEAD", path("sources", digest))
    except ApiError as error:
        if error.status == 404:
            return False
        raise
    return True


def _upload_source(client: ApiClient, snapshot: Snapshot, *, label: str) -> None:
    archive = snapshot.archive
    with output.progress(f"uploading {label}", len(archive)) as on_sent:
        client.request(
            "PUT",
            path("sources", snapshot.digest),
            body=archive,
            headers={"Content-Type": "application/x-tar"},
            timeout=UPLOAD_TIMEOUT,
            on_sent=on_sent,
        )


def _apply_body(
    texts: Sequence[SourceText], snapshots: Sequence[tuple[Document, Snapshot]], *, make_default: bool
) -> dict[str, Any]:
    """The ``POST /apply`` request: the texts as read, and the digest of each (file, source) written."""
    digests = {(doc.file, doc.spec.source): snapshot.digest for doc, snapshot in snapshots}
    return {
        "documents": [{"file": text.file, "text": text.text} for text in texts],
        "sources": [
            {"file": file, "source": source, "digest": digest} for (file, source), digest in digests.items()
        ],
        "make_default": make_default,
    }


# --- pipelines and versions ---


@click.command()
@json_option
@output.reports_errors
def pipelines(as_json: bool) -> None:
    """List pipelines with their default and latest versions."""
    _show_list("/pipelines", PipelineRow, as_json=as_json, empty="no pipelines")


@click.command()
@click.argument("name")
@json_option
@output.reports_errors
def versions(name: str, as_json: bool) -> None:
    """List the versions of pipeline NAME, newest first."""
    _show_list(
        path("pipelines", name, "versions"), VersionRow, as_json=as_json, empty=f"{name} has no versions"
    )


Change = Callable[[str, int], tuple[str, str, dict[str, Any]]]


def _lifecycle_command(name: str, summary: str, change: Change, done: str) -> click.Command:
    """A ``sluice NAME PIPELINE VERSION`` command that sends ``change(pipeline, version)``.

    ``change`` gives (method, API path, JSON body); ``done`` is formatted with pipeline and version.
    """

    @click.command(name, help=summary)
    @click.argument("pipeline")
    @click.argument("version", type=VERSION)
    @json_option
    @output.reports_errors
    def command(pipeline: str, version: int, as_json: bool) -> None:
        method, api_path, body = change(pipeline, version)
        answer = _client().request(method, api_path, json=body)
        _done(answer, as_json=as_json, line=done.format(pipeline=pipeline, version=version))

    return command


def _set_status(status: str) -> Change:
    return lambda pipeline, version: (
        "PATCH",
        path("pipelines", pipeline, "versions", version),
        {"status": status},
    )


default = _lifecycle_command(
    "default",
    "Make VERSION the default version of PIPELINE.",
    lambda pipeline, version: ("PUT", path("pipelines", pipeline, "default"), {"version": version}),
    "{pipeline}: v{version} is now the default",
)
deprecate = _lifecycle_command(
    "deprecate",
    "Deprecate VERSION of PIPELINE. It still runs; runs of it are reported.",
    _set_status("deprecated"),
    "{pipeline} v{version} deprecated",
)
disable = _lifecycle_command(
    "disable",
    "Disable VERSION of PIPELINE. It refuses new runs; the default version cannot be disabled.",
    _set_status("disabled"),
    "{pipeline} v{version} disabled",
)
enable = _lifecycle_command(
    "enable",
    "Make VERSION of PIPELINE active again.",
    _set_status("active"),
    "{pipeline} v{version} enabled",
)


# --- triggers and datastores ---


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
@output.reports_errors
def triggers(ctx: click.Context, as_json: bool) -> None:
    """List triggers, or act on one.

    Without a command, lists every trigger with its pipeline, source, state and last event.
    """
    if ctx.invoked_subcommand is None:
        _show_list("/triggers", TriggerRow, as_json=as_json, empty="no triggers")


def _trigger_action(name: str, method: str, action: str | None, summary: str, done: str) -> None:
    """Add ``sluice triggers NAME TRIGGER``: ``method`` on /triggers/TRIGGER[/action]."""

    @triggers.command(name, help=summary)
    @click.argument("trigger")
    @json_option
    @output.reports_errors
    def command(trigger: str, as_json: bool) -> None:
        segments = ("triggers", trigger) if action is None else ("triggers", trigger, action)
        answer = _client().request(method, path(*segments))
        _done(answer, as_json=as_json, line=f"trigger/{trigger} {done}")


_trigger_action("pause", "POST", "pause", "Pause TRIGGER: it starts no runs until resumed.", "paused")
_trigger_action("resume", "POST", "resume", "Resume a paused TRIGGER.", "resumed")
_trigger_action("delete", "DELETE", None, "Delete TRIGGER.", "deleted")


@triggers.command()
@click.argument("trigger")
@json_option
@output.reports_errors
def events(trigger: str, as_json: bool) -> None:
    """List the events TRIGGER saw. Each shows the run it became, or why none."""
    _show_list(
        path("triggers", trigger, "events"), EventRow, as_json=as_json, empty=f"{trigger} saw no events"
    )


@click.command()
@json_option
@output.reports_errors
def datastores(as_json: bool) -> None:
    """List datastores."""
    _show_list("/datastores", DatastoreRow, as_json=as_json, empty="no datastores")
