"""What the commands share: the API client made from the environment's settings, ``--json``, the
API's answers read as records (unknown fields ignored, missing ones a bad answer), paged lists
printed as tables, the confirmation line of an action, and the version argument.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, TypeVar

import click
import msgspec

from daemon.cli import output
from daemon.cli.http import ApiClient, BadAnswer
from daemon.config import Settings
from daemon.limits import INT32_MAX

json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of text.")


def api_client() -> ApiClient:
    return ApiClient.from_settings(Settings.from_env())


class _AbstractStruct(msgspec.structs.StructMeta, abc.ABCMeta):
    """A struct type that may declare abstract methods (``abc``): it cannot be made until they are."""


class Row(msgspec.Struct, metaclass=_AbstractStruct):
    """One item of an API list, printable as a table row under ``COLUMNS``."""

    COLUMNS: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def cells(self) -> tuple[str, ...]:
        """The row's cells, one per column of ``COLUMNS``."""


class Page(msgspec.Struct):
    items: list[dict[str, Any]]
    next_cursor: str | None = None


R = TypeVar("R")


def convert(data: Any, type_: type[R]) -> R:
    """``data`` from the API as ``type_``; a shape the CLI cannot read is a failed operation."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as error:
        raise BadAnswer(f"the Sluice API answered an unexpected shape: {error}") from None


def fetch_all(client: ApiClient, api_path: str) -> list[dict[str, Any]]:
    """Every item of a paged list, following ``next_cursor``."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = convert(client.request("GET", api_path, query={"cursor": cursor} if cursor else None), Page)
        items.extend(page.items)
        if not page.next_cursor:
            return items
        if page.next_cursor == cursor:
            raise BadAnswer(f"the Sluice API repeated the cursor of {api_path}")
        cursor = page.next_cursor


def show_list(api_path: str, row: type[Row], *, as_json: bool, empty: str) -> None:
    items = fetch_all(api_client(), api_path)
    if as_json:
        output.print_json({"items": items})
    else:
        output.print_table(row.COLUMNS, (item.cells() for item in convert(items, list[row])), empty=empty)


def confirm(answer: Any, *, as_json: bool, line: str) -> None:
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
