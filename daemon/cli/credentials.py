"""``sluice credentials``: NATS credentials for agents, services and admins, minted and revoked by the
daemon (admin only), and ``init``, the configuration of an operator's own NATS server.

A ``.creds`` file holds a secret: with ``-o FILE`` it is written readable by its owner only, without
it printed on stdout for a pipe (``… | ssh host 'cat > agent.creds'``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from daemon.cli import output
from daemon.cli.commands import Row, api_client, confirm, json_option, show_list
from daemon.cli.http import path
from daemon.config import Settings
from daemon.private_files import write_private
from kit.logsetup import configure_logging

output_option = click.option(
    "-o",
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the .creds file here (mode 0600) instead of printing it.",
)


def register(group: click.Group) -> None:
    group.add_command(credentials)


class CredentialRow(Row):
    COLUMNS = ("NAME", "ROLE", "STATUS", "MAY", "KEY", "CREATED")
    name: str
    role: str
    status: str
    public_key: str
    may: str = ""
    created_at: str | None = None

    def cells(self) -> tuple[str, ...]:
        return (
            self.name,
            self.role,
            self.status,
            self.may,
            self.public_key[:12],
            output.format_time(self.created_at),
        )


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
@output.reports_errors
def credentials(ctx: click.Context, as_json: bool) -> None:
    """NATS credentials: list them, mint them for an agent, a service or an admin, revoke them.

    Without a command, lists every credential Sluice minted (one line per key). Needs an admin
    token. `init` prepares an operator's own NATS server.
    """
    if ctx.invoked_subcommand is None:
        _list(as_json)


@credentials.command("list")
@json_option
@output.reports_errors
def list_command(as_json: bool) -> None:
    """List every credential Sluice minted, live or revoked."""
    _list(as_json)


def _list(as_json: bool) -> None:
    show_list("/credentials", CredentialRow, as_json=as_json, empty="no NATS credentials")


@credentials.command()
@click.argument("name")
@output_option
@output.reports_errors
def agent(name: str, output_path: Path | None) -> None:
    """Credentials for agent NAME: it may publish only its own heartbeat, step events and logs, and
    receive only its own assignments (sluice agent --creds FILE; its name is taken from them)."""
    _mint({"name": name, "role": "agent"}, output_path)


@credentials.command()
@click.argument("name")
@click.option(
    "--submit",
    "submit",
    metavar="PIPELINE",
    multiple=True,
    help="May request sluice.submit.PIPELINE (may repeat; default: every pipeline).",
)
@click.option(
    "--follow",
    "follow",
    metavar="PIPELINE",
    multiple=True,
    help="May receive sluice.runs.PIPELINE.* (may repeat; default: every pipeline).",
)
@click.option(
    "--publish",
    "publish",
    metavar="SUBJECT",
    multiple=True,
    help="May publish on SUBJECT, a trigger's "
    "subject; wildcards allowed, Sluice's own subjects never (may repeat).",
)
@output_option
@output.reports_errors
def service(
    name: str,
    submit: tuple[str, ...],
    follow: tuple[str, ...],
    publish: tuple[str, ...],
    output_path: Path | None,
) -> None:
    """Credentials for service NAME: submit runs, follow them, publish on trigger subjects; never an
    agent's or a step's subject."""
    body: dict[str, Any] = {"name": name, "role": "service", "publish": list(publish)}
    if submit:
        body["submit"] = list(submit)
    if follow:
        body["follow"] = list(follow)
    _mint(body, output_path)


@credentials.command()
@click.argument("name")
@output_option
@output.reports_errors
def admin(name: str, output_path: Path | None) -> None:
    """Credentials with every right in Sluice's NATS account (streams for JetStream triggers, the
    nats CLI): as powerful as the daemon; keep them with the operators."""
    _mint({"name": name, "role": "admin"}, output_path)


def _mint(body: dict[str, Any], output_path: Path | None) -> None:
    answer = api_client().request("POST", "/credentials", json=body)
    if output_path is None:
        click.echo(answer["creds"], nl=False)
        return
    write_private(output_path, answer["creds"])
    click.echo(f"{answer['role']} {answer['name']}: credentials written to {output_path}")


@credentials.command()
@click.argument("name")
@json_option
@output.reports_errors
def revoke(name: str, as_json: bool) -> None:
    """Revoke every key of NAME: NATS drops its connections and refuses it from then on. A revoked
    agent's running steps run again elsewhere."""
    answer = api_client().request("POST", path("credentials", name, "revoke"))
    confirm(answer, as_json=as_json, line=f"{name}: revoked ({len(answer['revoked'])} key(s) newly revoked)")


@credentials.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The data dir whose embedded PostgreSQL holds the trust (default: SLUICE_DATA_DIR); "
    "not used with SLUICE_DATABASE_URL.",
)
@click.option(
    "--resolver-dir",
    default="jwt",
    show_default=True,
    help="Where the NATS server keeps account JWTs (relative to its working directory).",
)
@click.option(
    "-o",
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the configuration here instead of printing it.",
)
@output.reports_errors
def init(data_dir: Path | None, resolver_dir: str, output_path: Path | None) -> None:
    """Prepare your own NATS server: make Sluice's NATS trust (once; kept in PostgreSQL) and print the
    configuration that makes nats-server enforce it (include it in the server's configuration).

    Run it before the daemon's first start against that server, with the daemon's SLUICE_DATABASE_URL.
    The daemon mints its own credentials from the trust; agents and services get theirs with
    `sluice credentials agent|service`. Without -o only the configuration goes to stdout: the log
    goes to stderr (SLUICE_LOG_FORMAT: console or json).
    """
    from daemon.trust.bootstrap import server_config

    settings = Settings.from_env().with_data_dir(data_dir)
    # The configuration may go to stdout (`… > sluice-auth.conf`): the log must not.
    configure_logging(settings.log_format)
    text = asyncio.run(server_config(settings, resolver_dir))
    if output_path is None:
        click.echo(text, nl=False)
    else:
        write_private(output_path, text)
        click.echo(f"NATS server configuration written to {output_path}", err=True)
