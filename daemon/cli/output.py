"""How CLI commands speak: tables for people, JSON for programs, one line per error (contract §2)."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from daemon.errors import SluiceError

P = ParamSpec("P")
R = TypeVar("R")

# Off a terminal nothing may wrap or be cut, so piped output stays one row per line.
_UNBOUNDED_WIDTH = 100_000
_PROGRESS_MIN_BYTES = 4 * 1024 * 1024


def exit_code(status: int) -> int:
    """The exit status for an error of HTTP ``status``: 2 for bad input (4xx but 409), else 1."""
    return 2 if 400 <= status < 500 and status != 409 else 1


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def format_detail(detail: Any) -> str:
    """One problem as ``file:line path: message``, with whichever of those parts it has."""
    if not isinstance(detail, Mapping):
        return str(detail)
    where = ":".join(str(detail[key]) for key in ("file", "line") if detail.get(key) not in (None, ""))
    location = " ".join(part for part in (where, str(detail.get("path") or "")) if part)
    message = str(detail.get("message", ""))
    return f"{location}: {message}" if location else message


def report(error: SluiceError) -> NoReturn:
    """Print ``error`` as one line per detail (or ``error: message`` without details) and exit."""
    if error.details:
        for detail in error.details:
            click.echo(format_detail(detail), err=True)
        raise SystemExit(exit_code(error.status))
    fail(error.message, exit_code(error.status))


def reports_errors(callback: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command's callback so a SluiceError ends it with :func:`report`, never a traceback."""

    @functools.wraps(callback)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return callback(*args, **kwargs)
        except SluiceError as error:
            report(error)

    return wrapper


def print_json(data: Any) -> None:
    """Pretty JSON on stdout."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str) -> None:
    """A borderless table on stdout: bold headers on a terminal, plain text elsewhere; cells fold, never cut.

    With no rows, ``empty`` goes to stderr instead, so stdout stays parseable.
    """
    rows = list(rows)
    if not rows:
        click.echo(empty, err=True)
        return
    table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 3, 0, 0))
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = _stdout()
    with console.capture() as captured:
        console.print(table)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def parse_time(value: str | None) -> dt.datetime | None:
    """An API timestamp (ISO 8601) as an aware datetime, UTC when it names no zone; None when absent
    or unreadable."""
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


def print_fields(fields: Sequence[tuple[str, str]]) -> None:
    """``name   value`` lines on stdout, the values aligned: the header of one record."""
    width = max((len(name) for name, _ in fields), default=0)
    for name, value in fields:
        click.echo(f"{name:<{width}}   {value}")


def format_time(value: str | None) -> str:
    """An API timestamp (ISO 8601) in local time, short: ``2026-11-23 14:02``; ``-`` when absent."""
    moment = parse_time(value)
    if moment is None:
        return value or "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def format_duration(seconds: float | None) -> str:
    """A duration for people: ``0.4s``, ``42s``, ``4m 05s``, ``2h 03m``, ``3d 04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    for unit, size, smaller, smaller_size in _DURATION_UNITS:
        if whole >= size:
            return f"{whole // size}{unit} {whole % size // smaller_size:02d}{smaller}"
    return f"{whole}s"


_DURATION_UNITS = (("d", 86_400, "h", 3_600), ("h", 3_600, "m", 60), ("m", 60, "s", 1))


def elapsed(start: str | dt.datetime | None, end: str | dt.datetime | None = None) -> float | None:
    """Seconds from ``start`` to ``end`` (now when None); None without a readable start."""
    begun = parse_time(start) if isinstance(start, str | None) else start
    if begun is None:
        return None
    ended = parse_time(end) if isinstance(end, str) else end
    return ((ended or dt.datetime.now(dt.UTC)) - begun).total_seconds()


def format_age(value: str | None, *, now: dt.datetime | None = None) -> str:
    """How long ago an API timestamp was: ``2s ago``, ``5m ago``, ``3h ago``, ``2d ago``; ``-`` if absent."""
    seconds = elapsed(value, now)
    if seconds is None:
        return value or "-"
    whole = max(int(seconds), 0)
    for unit, size, _, _ in _DURATION_UNITS:
        if whole >= size:
            return f"{whole // size}{unit} ago"
    return f"{whole}s ago"


def format_size(size: float | None) -> str:
    """Bytes in binary units, at most one decimal: ``512Mi``, ``3.5Gi``, ``16Gi``; ``-`` when unknown."""
    if size is None:
        return "-"
    value, unit = float(size), ""
    for bigger in ("Ki", "Mi", "Gi", "Ti", "Pi"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{round(value, 1):g}{unit}"


def format_number(value: float | None) -> str:
    """A count or CPU cores without noise: ``8``, ``3.5``, ``0.25``; ``-`` when unknown."""
    return "-" if value is None else f"{round(value, 2):g}"


@contextlib.contextmanager
def progress(label: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A transfer bar on a terminal's stderr for ``total`` bytes; yields ``advance(n)``.

    Yields None (nothing to show) off a terminal or for small transfers.
    """
    console = Console(stderr=True)
    if not console.is_terminal or total < _PROGRESS_MIN_BYTES:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda sent: bar.advance(task, sent)


@contextlib.contextmanager
def live(render: Callable[[], RenderableType]) -> Iterator[Callable[[Sequence[str]], None]]:
    """Show changing state until the block ends; yields ``changed(lines)`` to call on each change.

    On a terminal, ``render()`` is redrawn on stdout a few times a second (and at once on a change),
    and its last frame stays. Elsewhere each changed line is printed as it comes.
    """
    console = _stdout()
    if not console.is_terminal:
        yield lambda lines: click.echo("".join(f"{line}\n" for line in lines), nl=False)
        return
    with Live(get_renderable=render, console=console, refresh_per_second=4) as display:
        yield lambda lines: display.refresh()


def _stdout() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = _UNBOUNDED_WIDTH
    return console
