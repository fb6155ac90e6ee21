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

# What `up` and `daemon` read from the environment (contract §6; README, Running it for real), in their
# --help: deployment files are checked against it (tests/deploy), so a variable they set exists.
ENVIRONMENT_HELP = """\b
Environment:
  SLUICE_DATABASE_URL          PostgreSQL DSN (unset: embedded under the data dir)
  SLUICE_NATS_URL              NATS URLs, comma-separated (unset: embedded under the data dir)
  SLUICE_NATS_CREDS            NATS credentials file (unset: minted from Sluice's trust)
  SLUICE_NATS_TLS_CA           CA of the NATS servers' certificates
  SLUICE_NATS_TLS_CERT         client certificate for NATS, with SLUICE_NATS_TLS_KEY
  SLUICE_NATS_CONNECT_TIMEOUT  seconds to wait for the first NATS connection (30)
  SLUICE_NATS_REPLICAS         copies of Sluice's streams, 1 to 5 (3 on a cluster; unset: 1 if new, else kept)
  SLUICE_DATA_DIR              the data dir (~/.local/share/sluice)
  SLUICE_API_TOKEN             the admin token (unset: made in DATA_DIR/credentials/api-token)
  SLUICE_API_HOSTS             host names the API answers to besides localhost, comma-separated
  SLUICE_API_MAX_BODY          largest request body (1Mi)
  SLUICE_API_MAX_UPLOAD        largest source upload (512Mi)
  SLUICE_PARAMS_MAX_BYTES      most a run's params may weigh as JSON (256Ki)
  SLUICE_LOG_FORMAT            console or json (console on a terminal)
  SLUICE_HEARTBEAT_TIMEOUT     seconds before a silent agent is lost (5)
  SLUICE_ASSIGN_TIMEOUT        seconds before an unanswered assignment goes elsewhere (2)
  SLUICE_RETRY_BACKOFF         first retry delay in seconds (1)
  SLUICE_UNLISTED_GRACE        seconds an attempt may be missing from its agent's heartbeats (15)
  SLUICE_SWEEP_INTERVAL        seconds between safety sweeps of ready steps (3)
  SLUICE_LEADER_RETRY          seconds between a standby's tries to lead (2)
"""


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


@click.command(epilog=ENVIRONMENT_HELP)
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


@click.command(epilog=ENVIRONMENT_HELP)
@_daemon_options
def daemon(data_dir: Path | None, port: int, host: str) -> None:
    """Run the control plane alone: the API, triggers and dispatch, without agents.

    Several daemons on one PostgreSQL and one NATS cluster share the work; one leads the triggers.
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
