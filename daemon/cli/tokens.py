"""``sluice tokens``: API tokens with a scope (admin only). A new token is printed once."""

from __future__ import annotations

import click

from daemon.cli import output
from daemon.cli.commands import Row, api_client, confirm, json_option, show_list
from daemon.cli.http import path


def register(group: click.Group) -> None:
    group.add_command(tokens)


class TokenRow(Row):
    COLUMNS = ("NAME", "SCOPE", "STATUS", "CREATED")
    name: str
    scope: str
    status: str
    created_at: str | None = None

    def cells(self) -> tuple[str, ...]:
        return (self.name, self.scope, self.status, output.format_time(self.created_at))


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
@output.reports_errors
def tokens(ctx: click.Context, as_json: bool) -> None:
    """API tokens: list them, make one with a scope, revoke one. Needs an admin token.

    Scopes: read (GETs and streams), run (also start and cancel runs, pause and resume triggers),
    publish (also apply and the version lifecycle), admin (everything, tokens and NATS credentials
    included).
    """
    if ctx.invoked_subcommand is None:
        show_list("/tokens", TokenRow, as_json=as_json, empty="no tokens")


@tokens.command()
@click.argument("name")
@click.option(
    "--scope", required=True, type=click.Choice(["read", "run", "publish", "admin"]), help="What it may do."
)
@json_option
@output.reports_errors
def create(name: str, scope: str, as_json: bool) -> None:
    """Make token NAME with SCOPE and print it (once: Sluice keeps only its digest)."""
    answer = api_client().request("POST", "/tokens", json={"name": name, "scope": scope})
    confirm(answer, as_json=as_json, line=answer["token"])


@tokens.command()
@click.argument("name")
@json_option
@output.reports_errors
def revoke(name: str, as_json: bool) -> None:
    """Revoke token NAME: the API refuses it from now on."""
    answer = api_client().request("POST", path("tokens", name, "revoke"))
    confirm(answer, as_json=as_json, line=f"token/{name} revoked")
