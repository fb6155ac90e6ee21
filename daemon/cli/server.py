"""`sluice up` and `sluice daemon`: the long-running processes."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from daemon.config import DEFAULT_PORT, Settings
from daemon.errors import SluiceError
from kit.logsetup import configure_logging
from kit.redaction import redacted_urls

HOST_HELP = "Address the API listens on; anything but loopback requires SLUICE_API_TOKEN."


def register(group: click.Group) -> None:
    group.add_command(up)
    group.add_command(daemon)


def _daemon_options(command):
    """The options `up` and `daemon` share: where state lives and where the API listens."""
    options = [
        click.option(
            "--data-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Where state lives (default: SLUICE_DATA_DIR or ~/.local/share/sluice).",
        ),
        click.option(
            "--port",
            type=click.IntRange(1, 65535),
            default=DEFAULT_PORT,
            show_default=True,
            help="Port of the HTTP API.",
        ),
        click.option("--host", default="127.0.0.1", show_default=True, help=HOST_HELP),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@_daemon_options
@click.option(
    "--agents",
    type=click.IntRange(0, 64),
    default=1,
    show_default=True,
    help="Local agents to run beside the daemon; they share this machine's CPUs and memory.",
)
def up(data_dir: Path | None, port: int, host: str, agents: int) -> None:
    """Run everything on this machine: embedded PostgreSQL and NATS, the daemon and local agents.

    PostgreSQL and NATS are embedded under the data dir unless SLUICE_DATABASE_URL / SLUICE_NATS_URL
    are set. Runs until SIGINT or SIGTERM; state survives restarts with the same data dir.
    """
    _serve(_settings(data_dir), host, port, announce=True, agents=agents)


@click.command()
@_daemon_options
def daemon(data_dir: Path | None, port: int, host: str) -> None:
    """Run the control plane alone: the API, triggers and dispatch, without agents.

    Several daemons on one PostgreSQL and one NATS cluster share the work; one leads the triggers.
    Configured through the environment (README, "Running it for real"), chiefly:

    \b
      SLUICE_DATABASE_URL   PostgreSQL DSN (unset: embedded under the data dir)
      SLUICE_NATS_URL       NATS server URLs, comma-separated (unset: embedded)
      SLUICE_NATS_REPLICAS  copies JetStream keeps of Sluice's streams, consumer and source
                            bucket: 1 to 5 (default 1; 3 on a three-server NATS cluster)
      SLUICE_NATS_CREDS     a credentials file (unset: the daemon mints its own)
      SLUICE_API_TOKEN      the admin token (unset: made in the data dir)
      SLUICE_API_HOSTS      host names the API answers to, comma-separated
    """
    _serve(_settings(data_dir), host, port, announce=False, agents=0)


def _settings(data_dir: Path | None) -> Settings:
    from daemon.cli.output import fail

    try:
        return Settings.from_env().with_data_dir(data_dir)
    except ValueError as exc:
        fail(str(exc), 2)


def announcement(endpoints) -> str:
    """What `sluice up` prints once it is ready: where it listens and how to join it."""
    lines = [
        f"Sluice is up (data dir {endpoints.data_dir})",
        f"  API:  {endpoints.api_url}",
        f"  UI:   {endpoints.api_url}/  (log in with an API token: SLUICE_API_TOKEN, or the file "
        f"{endpoints.data_dir / 'credentials' / 'api-token'})",
        f"  NATS: {redacted_urls(endpoints.nats_url)}",
    ]
    if endpoints.service_creds is not None:
        lines += [
            f"        services connect with the credentials in {endpoints.service_creds}",
            "        agents join with: sluice credentials agent NAME -o NAME.creds &&",
            f"          SLUICE_NATS_URL={endpoints.nats_url} sluice agent --creds NAME.creds",
        ]
    else:
        lines.append(
            f"        agents join with SLUICE_NATS_URL={redacted_urls(endpoints.nats_url)} sluice agent"
        )
    return "\n".join([*lines, "Stop with Ctrl-C."])


def _serve(settings: Settings, host: str, port: int, *, announce: bool, agents: int) -> None:
    from daemon.cli.output import fail
    from daemon.runtime.service import ConfigurationError, Endpoints, run_daemon

    try:
        configure_logging(settings.log_format)
    except ValueError as exc:
        fail(str(exc), 2)

    def on_ready(endpoints: Endpoints) -> None:
        if announce:
            click.echo(announcement(endpoints))

    async def main() -> None:
        from daemon.runtime.local_agents import agent_names, local_agents

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        ready: asyncio.Future[Endpoints] = loop.create_future()
        # The agents stop before the daemon, so that their last step events are still consumed.
        daemon_stop = asyncio.Event()
        daemon = asyncio.create_task(
            run_daemon(
                settings,
                host=host,
                port=port,
                stop=daemon_stop,
                on_ready=ready.set_result,
                local_agents=agent_names(agents) if agents else (),
            )
        )
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({daemon, ready}, return_when=asyncio.FIRST_COMPLETED)
            if ready.done():
                on_ready(ready.result())
                endpoints = ready.result()
                async with local_agents(agents, endpoints.nats_url, settings.data_dir, endpoints.agent_creds):
                    await asyncio.wait({daemon, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            daemon_stop.set()
            await daemon

    try:
        asyncio.run(main())
    except ConfigurationError as exc:
        fail(exc.message, 2)
    except SluiceError as exc:
        fail(exc.message, 1)
