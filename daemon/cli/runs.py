"""The run commands: ``sluice run`` and ``sluice runs`` with ``show``, ``logs`` and ``cancel`` (contract §2).

Thin clients of ``POST /pipelines/{name}/runs``, ``/runs`` and ``/events`` (contract §4), following
the catalog commands' pattern: one or a few requests, then a table, lines, or ``--json``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

import click
import msgspec

from daemon.cli import output
from daemon.cli.commands import VERSION, Page, api_client, confirm, convert, json_option
from daemon.cli.follow import RunFollower, RunView, steps_table
from daemon.cli.http import ApiClient, ApiUnreachable, BadAnswer, path
from daemon.cli.records import RUN_STATUSES, Run, Step

DEFAULT_LIMIT = 20
_PAGE_LIMIT = 100


def register(group: click.Group) -> None:
    """Add ``run`` and ``runs`` to the ``sluice`` group."""
    group.add_command(run)
    group.add_command(runs)


def parse_param_value(text: str) -> Any:
    """A ``-p`` value as sent: a JSON number, ``true``, ``false``, ``null`` or quoted string when the
    text reads as one (``5``, ``2.5``, ``"007"``), else the text itself (``2026-11-23``, ``007``)."""
    try:
        value = json.loads(text, parse_constant=_refuse)
    except ValueError:
        return text
    return value if value is None or isinstance(value, str | int | float) else text


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not a parameter value")


class ParamAssignment(click.ParamType):
    """``KEY=VALUE``: a parameter name and its value, typed by :func:`parse_param_value`."""

    name = "KEY=VALUE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        key, equals, text = str(value).partition("=")
        if not equals or not key.strip():
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        return key.strip(), parse_param_value(text)


PARAM = ParamAssignment()


class Submitted(msgspec.Struct):
    """The answer to ``POST /pipelines/{name}/runs``: the contract names the id ``run_id``."""

    run_id: str | None = None
    id: str | None = None


class LogLine(msgspec.Struct):
    line: str
    attempt: int | None = None
    stream: str | None = None


# --- run ---


@click.command()
@click.argument("name")
@click.option("--version", type=VERSION, help="Run this version (3 or v3) instead of the default one.")
@click.option(
    "-p",
    "--param",
    "params",
    type=PARAM,
    multiple=True,
    help="A parameter, e.g. -p date=2026-11-23. Repeatable.",
)
@click.option("--no-reuse", is_flag=True, help="Execute every step, even where earlier outputs fit.")
@click.option("--wait", is_flag=True, help="Show step progress until the run ends; exit 1 if it fails.")
@click.option("--idempotency-key", metavar="KEY", help="Retrying with the same KEY starts no second run.")
@json_option
@output.reports_errors
def run(
    name: str,
    version: int | None,
    params: tuple[tuple[str, Any], ...],
    no_reuse: bool,
    wait: bool,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Start a run of pipeline NAME and print its id.

    A -p value is sent as a number, true, false or null when it reads as one, else as text; quote
    it to send text that looks like a number: -p code='"007"'. With --wait, exits 0 when the run
    succeeds and 1 when it fails or is cancelled; Ctrl-C stops waiting, not the run.
    """
    body: dict[str, Any] = {"params": param_dict(params), "reuse": not no_reuse}
    if version is not None:
        body["version"] = version
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    client = api_client()
    answer = client.request("POST", path("pipelines", name, "runs"), json=body, headers=headers)
    submitted = convert(answer, Submitted)
    run_id = submitted.run_id or submitted.id
    if not run_id:
        raise BadAnswer("the Sluice API started a run without saying its run_id")
    if not wait:
        confirm(answer, as_json=as_json, line=run_id)
        return
    if not as_json:
        click.echo(run_id)
    _wait(client, run_id, as_json=as_json)


def param_dict(params: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in params:
        if key in values:
            raise click.BadParameter(f"{key} is given twice", param_hint="'-p' / '--param'")
        values[key] = value
    return values


def _wait(client: ApiClient, run_id: str, *, as_json: bool) -> None:
    """Follow the run to its end; print its outcome and exit 1 unless it succeeded."""
    view = RunView(run_id)
    display = contextlib.nullcontext(_ignore) if as_json else output.live(lambda: steps_table(view))
    try:
        with display as changed:
            follower = RunFollower(client, view, changed)
            final = follower.follow()
    except KeyboardInterrupt:
        click.echo(f"stopped waiting; run {run_id} goes on (cancel: sluice runs cancel {run_id})", err=True)
        raise SystemExit(1) from None
    if as_json:
        output.print_json(follower.answer)
    if final.status != "succeeded":
        for line in final.failures():
            click.echo(f"error: {line}", err=True)
        raise SystemExit(1)
    if not as_json:
        click.echo(f"run {run_id} succeeded in {output.format_duration(final.duration())}")


def _ignore(lines: Sequence[str]) -> None:
    """Changes nobody is shown (``--json`` prints only the final run)."""


# --- runs ---


@click.group(invoke_without_command=True)
@click.option("--pipeline", metavar="NAME", help="Only runs of pipeline NAME.")
@click.option("--status", type=click.Choice(RUN_STATUSES), help="Only runs in this status.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="At most this many runs, newest first.",
)
@json_option
@click.pass_context
@output.reports_errors
def runs(ctx: click.Context, pipeline: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List runs, or inspect or cancel one.

    Without a command, lists the newest runs with their status and duration.
    """
    if ctx.invoked_subcommand is not None:
        return
    filters = {key: value for key, value in (("pipeline", pipeline), ("status", status)) if value}
    items = _newest_runs(api_client(), filters, limit)
    if as_json:
        output.print_json({"items": items})
    else:
        rows = (item.cells() for item in convert(items, list[Run]))
        output.print_table(Run.COLUMNS, rows, empty="no runs")


def _newest_runs(client: ApiClient, filters: dict[str, str], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` runs of ``GET /runs``, following ``next_cursor`` while more are wanted."""
    items: list[dict[str, Any]] = []
    query: dict[str, str | int] = dict(filters)
    while len(items) < limit:
        query["limit"] = min(limit - len(items), _PAGE_LIMIT)
        page = convert(client.request("GET", "/runs", query=query), Page)
        items.extend(page.items)
        if not page.items or not page.next_cursor:
            break
        query["cursor"] = page.next_cursor
    return items[:limit]


@runs.command()
@click.argument("run_id")
@json_option
@output.reports_errors
def show(run_id: str, as_json: bool) -> None:
    """Show run RUN_ID with its steps.

    Prints why the run exists, its parameters and times, then each step's status, attempts, agent,
    exit code, reuse and reason to wait, why each step was reused or executed, the attempts that
    failed, the steps' inputs with the fingerprints they saw, and their outputs and metrics.
    """
    answer = api_client().request("GET", path("runs", run_id))
    if as_json:
        output.print_json(answer)
        return
    record = convert(answer, Run)
    output.print_fields(_run_fields(record))
    steps = record.steps
    sections = (
        (STEP_COLUMNS, [_step_cells(step) for step in steps], "no steps yet"),
        (("STEP", "REUSE", "WHY"), _reuse_rows(steps), None),
        (("STEP", "WARNING"), [(step.name, step.warning) for step in steps if step.warning], None),
        (ATTEMPT_COLUMNS, _unsuccessful_attempts(steps), None),
        (INPUT_COLUMNS, _input_rows(steps), None),
        (("STEP", "OUTPUT", "PATH"), [(s.name, *item) for s in steps for item in s.outputs.items()], None),
        (("STEP", "METRIC", "VALUE"), _metric_rows(steps), None),
    )
    for columns, rows, empty in sections:
        if rows or empty:
            click.echo()
            output.print_table(columns, rows, empty=empty or "")


STEP_COLUMNS = ("STEP", "STATUS", "ATTEMPTS", "AGENT", "EXIT", "REUSED", "DURATION", "WAITING")
ATTEMPT_COLUMNS = ("STEP", "ATTEMPT", "AGENT", "STATUS", "EXIT", "ERROR")
INPUT_COLUMNS = ("STEP", "INPUT", "DATASTORE:PATH", "FINGERPRINT", "FROM")


RESOLUTIONS = {
    "default": " (the default version when the run was created)",
    "pinned": " (pinned by the trigger)",
    "manual": " (asked for by version)",
}


def _run_fields(record: Run) -> list[tuple[str, str]]:
    trigger = "manual" if record.trigger is None else record.trigger
    if record.event_id is not None:
        trigger += f" (event {record.event_id})"
    return [
        ("run", record.id),
        ("pipeline", f"{record.pipeline} v{record.version}" + RESOLUTIONS.get(record.resolution or "", "")),
        ("status", record.status + (f": {record.reason}" if record.reason else "")),
        ("trigger", trigger),
        ("params", " ".join(f"{key}={cell_text(value)}" for key, value in record.params.items()) or "-"),
        ("created", output.format_time(record.created_at)),
        ("started", output.format_time(record.started_at)),
        ("finished", output.format_time(record.finished_at)),
        ("duration", output.format_duration(record.duration())),
    ]


def _step_cells(step: Step) -> tuple[str, ...]:
    last = step.last_attempt
    return (
        step.name,
        step.status,
        str(len(step.attempts)),
        (last.agent if last else None) or "-",
        cell_text(last.exit_code if last else None),
        "yes" if step.reused else "no",
        output.format_duration(output.elapsed(last.started_at, last.finished_at) if last else None),
        step.waiting_reason or "",
    )


def _reuse_rows(steps: Sequence[Step]) -> list[tuple[str, ...]]:
    return [(step.name, step.reuse.outcome, step.reuse.reason) for step in steps if step.reuse is not None]


def _input_rows(steps: Sequence[Step]) -> list[tuple[str, ...]]:
    return [
        (step.name, item.name, item.where(), item.fingerprint or "-", item.source())
        for step in steps
        for item in step.inputs
    ]


def _metric_rows(steps: Sequence[Step]) -> list[tuple[str, ...]]:
    return [(step.name, metric.name, cell_text(metric.value)) for step in steps for metric in step.metrics]


def _unsuccessful_attempts(steps: Sequence[Step]) -> list[tuple[str, ...]]:
    """Every attempt that failed, was lost or was cancelled, with its error: why the run looks so."""
    return [
        (
            step.name,
            str(a.number),
            a.agent or "-",
            a.status,
            cell_text(a.exit_code),
            a.one_line_error() or "-",
        )
        for step in steps
        for a in step.attempts
        if a.status in ("failed", "lost", "cancelled")
    ]


def cell_text(value: Any) -> str:
    """A JSON value in a cell: strings as they are, ``-`` for null, anything else as JSON."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


@runs.command()
@click.argument("run_id")
@click.argument("step", required=False)
@click.option("--attempt", type=click.IntRange(min=1), help="That attempt's log, not the latest. Needs STEP.")
@click.option("-f", "--follow", is_flag=True, help="Print new lines until the step ends. Needs STEP.")
@output.reports_errors
def logs(run_id: str, step: str | None, attempt: int | None, follow: bool) -> None:
    """Print the logs of run RUN_ID's steps.

    With STEP, that step's log; without, the log of every step that ran, in order, each under a
    `==> STEP <==` header.
    """
    client = api_client()
    if step is None:
        if attempt is not None or follow:
            raise click.UsageError("--attempt and --follow need a STEP")
        _print_all_logs(client, run_id)
        return
    logs_path = path("runs", run_id, "steps", step, "logs")
    query: dict[str, str | int] = {} if attempt is None else {"attempt": attempt}
    if follow:
        _follow_log(client, logs_path, query, label=f"step {step} of run {run_id}")
    else:
        _echo_text(client.text(logs_path, query=query))


def _print_all_logs(client: ApiClient, run_id: str) -> None:
    record = convert(client.request("GET", path("runs", run_id)), Run)
    ran = [step for step in record.steps if step.attempts]
    if not ran:
        click.echo(f"no step of run {run_id} has run yet", err=True)
    for number, step in enumerate(ran):
        click.echo(("\n" if number else "") + f"==> {step.name} <==")
        _echo_text(client.text(path("runs", run_id, "steps", step.name, "logs")))


def _follow_log(client: ApiClient, logs_path: str, query: dict[str, str | int], *, label: str) -> None:
    """Print a followed log's lines until its ``end`` event; a header marks each new attempt."""
    shown: int | None = None
    with client.stream(logs_path, query=query | {"follow": "true"}) as events:
        for event in events:
            if event.event == "end":
                return
            if event.event != "line":
                continue
            line = convert(event.json(), LogLine)
            if shown is not None and line.attempt not in (None, shown):
                click.echo(f"==> attempt {line.attempt} <==")
            shown = line.attempt if line.attempt is not None else shown
            click.echo(line.line.removesuffix("\n"))
    raise ApiUnreachable(f"the log stream of {label} ended before the step did")


def _echo_text(text: str) -> None:
    click.echo(text, nl=bool(text) and not text.endswith("\n"))


@runs.command()
@click.argument("run_id")
@json_option
@output.reports_errors
def cancel(run_id: str, as_json: bool) -> None:
    """Cancel run RUN_ID.

    Its steps that have not started never start; its running steps are stopped.
    """
    answer = api_client().request("POST", path("runs", run_id, "cancel"))
    record = convert(answer, Run)
    if record.status == "cancelled":
        line = f"run {record.id} cancelled"
    elif record.finished:
        line = f"run {record.id} had already {record.status}"
    else:
        line = f"run {record.id} is being cancelled"
    confirm(answer, as_json=as_json, line=line)
