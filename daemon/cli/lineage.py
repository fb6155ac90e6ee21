"""``sluice lineage DATASTORE:PATH``: who read data there (with the fingerprint each saw), and which
step wrote it."""

from __future__ import annotations

from typing import Any

import click
import msgspec

from daemon.cli import output
from daemon.cli.commands import api_client, convert, json_option
from daemon.cli.records import Input, short_id
from daemon.documents.names import NAME
from daemon.rules.lineage import BadPath, clean_path

_PAGE_LIMIT = 500
DEFAULT_LIMIT = 50


def register(group: click.Group) -> None:
    group.add_command(lineage)


class Target(click.ParamType):
    """``DATASTORE:PATH``: a datastore's name, a colon, a path relative to it (empty: all of it)."""

    name = "DATASTORE:PATH"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        datastore, colon, path = str(value).partition(":")
        if not colon or not NAME.fullmatch(datastore):
            self.fail(f"{value!r} is not DATASTORE:PATH (for example landing:data/day1)", param, ctx)
        try:
            return datastore, clean_path(path)
        except BadPath as exc:
            self.fail(f"the path of {value!r}: {exc}", param, ctx)


class Reader(msgspec.Struct):
    run_id: str
    pipeline: str
    version: int
    step: str
    status: str
    input: Input
    created_at: str | None = None

    def cells(self) -> tuple[str, ...]:
        return (
            short_id(self.run_id),
            f"{self.pipeline} v{self.version}",
            self.step,
            self.status,
            self.input.name,
            self.input.where(),
            self.input.fingerprint or "-",
            output.format_time(self.created_at),
        )


READER_COLUMNS = ("RUN", "PIPELINE", "STEP", "STATUS", "INPUT", "READ", "FINGERPRINT", "CREATED")


class ReusedFrom(msgspec.Struct):
    run_id: str
    step: str
    status: str


class Writer(msgspec.Struct):
    run_id: str
    pipeline: str
    version: int
    step: str
    output: str
    status: str
    reused_from: ReusedFrom | None = None

    def describe(self) -> str:
        """``output out of step a, run 3f2a… (p v1): succeeded`` (and where it was reused from)."""
        said = f"output {self.output} of step {self.step}, run {self.run_id} "
        said += f"({self.pipeline} v{self.version}): {self.status}"
        if self.reused_from is not None:
            origin = self.reused_from
            said += f", reused from step {origin.step} of run {origin.run_id} ({origin.status})"
        return said


class Answer(msgspec.Struct):
    writer: Writer | None = None
    items: list[dict[str, Any]] = []
    next_cursor: str | None = None


@click.command()
@click.argument("target", metavar="DATASTORE:PATH", type=Target())
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="At most this many readers, newest first.",
)
@json_option
@output.reports_errors
def lineage(target: tuple[str, str], limit: int, as_json: bool) -> None:
    """Who read data at, under or around DATASTORE:PATH, and which step wrote it.

    Lists the step runs that read the path, something under it, or a directory holding it, newest
    first, with the fingerprint each saw of what it read; for a run's output
    (default:runs/RUN/STEP/OUTPUT) also the step run that wrote it, or the one it was reused from.
    """
    datastore, path = target
    client = api_client()
    query: dict[str, str | int] = {"datastore": datastore, "path": path}
    items: list[dict[str, Any]] = []
    first: Answer | None = None
    while len(items) < limit:
        query["limit"] = min(limit - len(items), _PAGE_LIMIT)
        answer = client.request("GET", "/lineage", query=query)
        page = convert(answer, Answer)
        first = first or page
        items.extend(page.items)
        if not page.items or not page.next_cursor:
            break
        query["cursor"] = page.next_cursor
    assert first is not None
    if as_json:
        writer = None if first.writer is None else msgspec.to_builtins(first.writer)
        output.print_json({"datastore": datastore, "path": path, "writer": writer, "items": items[:limit]})
        return
    if first.writer is not None:
        output.print_fields([("written by", first.writer.describe())])
        click.echo()
    rows = [reader.cells() for reader in convert(items[:limit], list[Reader])]
    output.print_table(READER_COLUMNS, rows, empty=f"no step run read {datastore}:{path}")
