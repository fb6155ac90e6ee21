"""The catalog commands: pipelines and versions, triggers, datastores, and ``apply`` (in
:mod:`daemon.cli.apply`) registered with them (contract §2).

Each command is a thin client of the daemon's HTTP API (contract §4): it validates what it can
locally, sends one or a few requests, and prints a table, one line per item, or ``--json``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import msgspec

from daemon.cli import output
from daemon.cli.apply import apply
from daemon.cli.commands import VERSION, Row, api_client, confirm, json_option, show_list
from daemon.cli.http import path


def register(group: click.Group) -> None:
    """Add the catalog commands to the ``sluice`` group."""
    for command in (apply, pipelines, versions, default, deprecate, disable, enable, triggers, datastores):
        group.add_command(command)


# --- the catalog as the CLI lists it ---


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
    status: dict[str, Any] = msgspec.field(default_factory=dict)

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
    spec: dict[str, Any] = msgspec.field(default_factory=dict)
    bucket: str | None = None
    prefix: str = ""
    endpoint: str | None = None

    def cells(self) -> tuple[str, ...]:
        """A local datastore's path; an s3 one's ``s3://bucket/prefix``, and its endpoint if any."""
        if self.bucket is not None:
            where = "s3://" + "/".join(part for part in (self.bucket, self.prefix) if part)
            return (self.name, self.type, where + (f" at {self.endpoint}" if self.endpoint else ""))
        return (self.name, self.type, self.path or str(self.spec.get("path", "-")))


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


# --- pipelines and versions ---


@click.command()
@json_option
@output.reports_errors
def pipelines(as_json: bool) -> None:
    """List pipelines with their default and latest versions."""
    show_list("/pipelines", PipelineRow, as_json=as_json, empty="no pipelines")


@click.command()
@click.argument("name")
@json_option
@output.reports_errors
def versions(name: str, as_json: bool) -> None:
    """List the versions of pipeline NAME, newest first."""
    show_list(
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
        answer = api_client().request(method, api_path, json=body)
        confirm(answer, as_json=as_json, line=done.format(pipeline=pipeline, version=version))

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
        show_list("/triggers", TriggerRow, as_json=as_json, empty="no triggers")


def _trigger_action(name: str, method: str, action: str | None, summary: str, done: str) -> None:
    """Add ``sluice triggers NAME TRIGGER``: ``method`` on /triggers/TRIGGER[/action]."""

    @triggers.command(name, help=summary)
    @click.argument("trigger")
    @json_option
    @output.reports_errors
    def command(trigger: str, as_json: bool) -> None:
        segments = ("triggers", trigger) if action is None else ("triggers", trigger, action)
        answer = api_client().request(method, path(*segments))
        confirm(answer, as_json=as_json, line=f"trigger/{trigger} {done}")


_trigger_action("pause", "POST", "pause", "Pause TRIGGER: it starts no runs until resumed.", "paused")
_trigger_action("resume", "POST", "resume", "Resume a paused TRIGGER.", "resumed")
_trigger_action("delete", "DELETE", None, "Delete TRIGGER.", "deleted")


@triggers.command()
@click.argument("trigger")
@json_option
@output.reports_errors
def events(trigger: str, as_json: bool) -> None:
    """List the events TRIGGER saw. Each shows the run it became, or why none."""
    show_list(
        path("triggers", trigger, "events"), EventRow, as_json=as_json, empty=f"{trigger} saw no events"
    )


@click.command()
@json_option
@output.reports_errors
def datastores(as_json: bool) -> None:
    """List datastores."""
    show_list("/datastores", DatastoreRow, as_json=as_json, empty="no datastores")
