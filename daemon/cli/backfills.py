"""Backfills from the command line: ``sluice triggers backfill`` starts one, ``sluice backfills``
lists them, ``sluice backfills cancel`` and ``sluice backfills wait`` act on one.

``--wait`` follows the backfill by polling ``GET /backfills/{id}``: a bar of events offered out of
its total, with runs created, succeeded, failed and duplicates, until it ends; exit 1 unless it
succeeded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from daemon.cli import output
from daemon.cli.catalog import triggers
from daemon.cli.commands import VERSION, Row, api_client, confirm, json_option, show_list
from daemon.cli.http import ApiClient, path

POLL_S = 0.5
STATUSES = ("running", "succeeded", "failed", "cancelled")


def register(group: click.Group) -> None:
    group.add_command(backfills)


class BackfillRow(Row, rename={"start": "from", "end": "to"}):
    """A list item: the API names the range ``from`` and ``to``."""

    COLUMNS = ("ID", "TRIGGER", "FROM", "TO", "STATUS", "EVENTS", "RUNS", "OK", "FAILED", "DUPLICATES")
    id: int
    trigger: str
    status: str
    total: int
    counts: dict[str, int]
    start: str = ""
    end: str = ""

    def cells(self) -> tuple[str, ...]:
        counts = self.counts
        return (
            str(self.id),
            self.trigger,
            output.format_time(self.start),
            output.format_time(self.end),
            self.status,
            f"{counts.get('offered', 0)}/{self.total}",
            str(counts.get("runs", 0)),
            str(counts.get("succeeded", 0)),
            str(counts.get("failed", 0)),
            str(counts.get("duplicates", 0)),
        )


def _summary(answer: dict[str, Any]) -> str:
    counts = answer["counts"]
    return (
        f"backfill {answer['id']} {answer['status']}: {counts['offered']}/{answer['total']} events, "
        f"{counts['runs']} runs ({counts['succeeded']} succeeded, {counts['failed']} failed, "
        f"{counts['active']} active), {counts['duplicates']} duplicates"
    )


@triggers.command("backfill")
@click.argument("trigger")
@click.option("--from", "start", required=True, help="Start (included): ISO 8601 time or a date.")
@click.option("--to", "end", required=True, help="End (excluded): ISO 8601 time or a date.")
@click.option("--version", type=VERSION, help="Run this version (default: the trigger's own).")
@click.option("--max-active", type=click.IntRange(min=1), help="Runs of the backfill active at once.")
@click.option("--wait", is_flag=True, help="Show its progress until it ends; exit 1 unless it succeeded.")
@json_option
@output.reports_errors
def backfill(
    trigger: str, start: str, end: str, version: int | None, max_active: int | None, wait: bool, as_json: bool
) -> None:
    """Replay TRIGGER (cron or files) over [--from, --to): one event per fire (or file) in the range,
    as the live trigger would have made it; fires that already ran are duplicates and run nothing.

    Times without an offset, and dates (midnight), are read in the trigger's time zone.
    """
    body: dict[str, Any] = {"from": start, "to": end}
    if version is not None:
        body["version"] = version
    if max_active is not None:
        body["max_active"] = max_active
    client = api_client()
    answer = client.request("POST", path("triggers", trigger, "backfills"), json=body)
    if wait:
        _wait(client, answer["id"], as_json=as_json)
        return
    confirm(answer, as_json=as_json, line=f"backfill {answer['id']} of {trigger}: {answer['total']} events")


@click.group(invoke_without_command=True)
@click.option("--trigger", metavar="NAME", help="Only backfills of trigger NAME.")
@click.option("--status", type=click.Choice(STATUSES), help="Only backfills in this status.")
@json_option
@click.pass_context
@output.reports_errors
def backfills(ctx: click.Context, trigger: str | None, status: str | None, as_json: bool) -> None:
    """List backfills, newest first, with their progress; or act on one."""
    if ctx.invoked_subcommand is not None:
        return
    query = "&".join(f"{key}={value}" for key, value in (("trigger", trigger), ("status", status)) if value)
    show_list(
        "/backfills" + (f"?{query}" if query else ""), BackfillRow, as_json=as_json, empty="no backfills"
    )


@backfills.command("cancel")
@click.argument("backfill_id", metavar="ID", type=click.IntRange(min=1))
@json_option
@output.reports_errors
def cancel(backfill_id: int, as_json: bool) -> None:
    """Stop backfill ID making events; the runs it made already go on (cancel them with
    `sluice runs cancel`)."""
    answer = api_client().request("POST", path("backfills", backfill_id, "cancel"))
    confirm(answer, as_json=as_json, line=f"backfill {backfill_id} cancelled")


@backfills.command("wait")
@click.argument("backfill_id", metavar="ID", type=click.IntRange(min=1))
@json_option
@output.reports_errors
def wait(backfill_id: int, as_json: bool) -> None:
    """Show backfill ID's progress until it ends; exit 1 unless it succeeded."""
    _wait(api_client(), backfill_id, as_json=as_json)


def _wait(client: ApiClient, backfill_id: int, *, as_json: bool) -> None:
    try:
        with _display(quiet=as_json) as show:
            while True:
                answer = client.request("GET", path("backfills", backfill_id))
                show(answer)
                if answer["status"] != "running":
                    break
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        click.echo(f"stopped waiting; backfill {backfill_id} goes on", err=True)
        raise SystemExit(1) from None
    if as_json:
        output.print_json(answer)
    else:
        click.echo(_summary(answer))
    if answer["status"] != "succeeded":
        if answer.get("reason"):
            click.echo(f"error: backfill {backfill_id}: {answer['reason']}", err=True)
        raise SystemExit(1)


@contextlib.contextmanager
def _display(*, quiet: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """``show(answer)`` for each poll: a bar on a terminal's stderr; elsewhere a line per change."""
    console = Console(stderr=True)
    if quiet:
        yield lambda answer: None
        return
    if not console.is_terminal:
        last: list[str] = [""]

        def line(answer: dict[str, Any]) -> None:
            if (text := _summary(answer)) != last[0]:
                last[0] = text
                click.echo(text, err=True)

        yield line
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs {task.fields[runs]} · ok {task.fields[ok]} · failed {task.fields[failed]}"),
        TextColumn("· duplicates {task.fields[duplicates]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("events", total=None, runs=0, ok=0, failed=0, duplicates=0)

        def update(answer: dict[str, Any]) -> None:
            counts = answer["counts"]
            bar.update(
                task,
                total=answer["total"],
                completed=counts["offered"],
                runs=counts["runs"],
                ok=counts["succeeded"],
                failed=counts["failed"],
                duplicates=counts["duplicates"],
            )

        yield update
