"""`sluice agent`: a runner agent on this machine (contract §2). Needs NATS only.

Exit status: 0 after a clean stop (SIGINT/SIGTERM), 1 when it cannot start (NATS unreachable or
refusing its credentials, a Docker engine asked for but absent) or NATS cut it off (its credentials
were revoked), 2 for bad options (one line naming the option).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import structlog

from kit.logsetup import configure_logging
from kit.nats import BusError, NatsOptions, creds_agent
from kit.subjects import check_agent_name
from kit.units import parse_size
from runners import options
from runners.agent import Agent, AgentConfig
from runners.capacity import detect_capacity
from runners.executors import Executor
from runners.executors.docker import DockerExecutor, connect_docker
from runners.executors.process import ProcessExecutor

PARENT_CHECK_INTERVAL_S = 1.0
PR_SET_PDEATHSIG = 1

log = structlog.get_logger(__name__)

# What the agent reads from the environment, in its --help (deployment files are checked against it).
ENVIRONMENT_HELP = """\b
Environment:
  SLUICE_NATS_URL              NATS URLs, comma-separated (nats://127.0.0.1:4222)
  SLUICE_NATS_CREDS            this agent's NATS credentials file (as --creds)
  SLUICE_NATS_TLS_CA           CA of the NATS servers' certificates
  SLUICE_NATS_TLS_CERT         client certificate for NATS, with SLUICE_NATS_TLS_KEY
  SLUICE_NATS_CONNECT_TIMEOUT  seconds to wait for the first NATS connection (30)
  SLUICE_DATA_DIR              the cache dir is SLUICE_DATA_DIR/agent-cache unless --cache-dir
  SLUICE_LOG_FORMAT            console or json (console on a terminal)
"""


def _parsed(parse: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback that turns a parser's ``ValueError`` into a ``BadParameter`` (exit 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


@click.command(epilog=ENVIRONMENT_HELP)
@click.option(
    "--name",
    metavar="NAME",
    callback=_parsed(check_agent_name),
    help="Agent name and id (default: the name in --creds, else the host's short name). "
    "Two agents on one host need distinct names.",
)
@click.option(
    "--creds",
    metavar="FILE",
    type=click.Path(dir_okay=False, exists=True, readable=True),
    envvar="SLUICE_NATS_CREDS",
    help="NATS credentials of this agent (sluice credentials agent NAME -o FILE); or SLUICE_NATS_CREDS.",
)
@click.option(
    "--labels",
    metavar="K=V,…",
    multiple=True,
    callback=_parsed(options.parse_labels),
    help="Labels that step selectors match, k=v,k2=v2 (may repeat).",
)
@click.option(
    "--cpus",
    metavar="N",
    callback=_parsed(options.parse_cpus),
    help="CPU cores to offer (default: detected).",
)
@click.option(
    "--memory",
    metavar="SIZE",
    callback=_parsed(parse_size),
    help="Memory to offer, e.g. 16Gi (default: detected).",
)
@click.option(
    "--gpus",
    metavar="N|auto",
    default="auto",
    show_default=True,
    callback=_parsed(options.parse_gpus),
    help="NVIDIA GPUs to offer: a number, or auto to detect them through NVML.",
)
@click.option(
    "--executor",
    type=click.Choice(["process", "docker", "auto"]),
    default="auto",
    show_default=True,
    help="How steps run: process, docker (steps with an image only), or auto (both where Docker answers).",
)
@click.option(
    "--datastore",
    "datastores",
    metavar="NAME=PATH",
    multiple=True,
    callback=_parsed(options.parse_datastores),
    help="Where a datastore is on this machine, NAME=PATH (may repeat).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Source snapshots, work dirs, staged s3 datastores and cached objects "
    "(default: SLUICE_DATA_DIR/agent-cache, or ~/.cache/sluice).",
)
@click.option(
    "--object-cache",
    metavar="SIZE",
    default="10Gi",
    show_default=True,
    callback=_parsed(parse_size),
    help="Most disk that objects downloaded from s3 datastores may take in the cache dir (least "
    "recently used go first).",
)
@click.option(
    "--docker-network",
    metavar="NETWORK",
    help="Network of step containers (default: Docker's own default; 'none' isolates them).",
)
@click.option(
    "--drain-timeout",
    metavar="SECONDS",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to let running steps finish after SIGINT/SIGTERM before stopping them.",
)
@click.option(
    "--parent-pid", type=int, hidden=True, help="Stop when this process, the parent, is gone (sluice up)."
)
def agent(
    name: str | None,
    creds: str | None,
    labels: dict[str, str],
    cpus: float | None,
    memory: int | None,
    gpus: int | str,
    executor: str,
    datastores: dict[str, str],
    cache_dir: Path | None,
    object_cache: int,
    docker_network: str | None,
    drain_timeout: float,
    parent_pid: int | None,
) -> None:
    """Run a runner agent: execute the steps the daemon assigns, as processes or in containers.

    Connects to NATS only (SLUICE_NATS_URL, comma-separated; --creds or SLUICE_NATS_CREDS; TLS with
    SLUICE_NATS_TLS_CA, SLUICE_NATS_TLS_CERT and SLUICE_NATS_TLS_KEY) and advertises its CPUs,
    memory, GPUs, labels and datastores; declared values override detected ones. Runs until SIGINT
    or SIGTERM, then lets running steps finish (up to --drain-timeout).
    """
    if parent_pid is not None:
        _die_with(parent_pid)
    try:
        configure_logging(os.environ.get("SLUICE_LOG_FORMAT") or None)
    except ValueError as exc:
        _fail(str(exc), 2)
    try:
        credentialed = creds_agent(creds) if creds else None
    except (OSError, ValueError) as exc:
        _fail(f"cannot read the credentials {creds}: {exc}", 2)
    try:
        name = options.agent_name(name, credentialed, socket.gethostname())
        nats = NatsOptions.from_env().with_creds(creds)
    except ValueError as exc:
        _fail(str(exc), 2)
    config = AgentConfig(
        name=name,
        nats=nats,
        cache_dir=(cache_dir or _default_cache_dir()).expanduser().absolute(),
        labels=labels,
        datastores=datastores,
        drain_timeout_s=drain_timeout,
        object_cache_bytes=object_cache,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        assert current is not None

        def on_signal() -> None:
            if stop.is_set():  # a second signal: stop now, without waiting for running steps
                current.cancel()
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        # Not a task group: the agent's own errors must reach the handlers below as they are.
        watcher = None
        if parent_pid is not None:
            watcher = asyncio.create_task(_stop_when_orphaned(stop, parent_pid), name="parent-watch")
        try:
            capacity = await asyncio.to_thread(detect_capacity, cpus=cpus, memory=memory, gpus=gpus)
            executors = await available_executors(executor, docker_network)
            if not stop.is_set():
                await Agent(config, capacity, executors).run(stop)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    try:
        asyncio.run(main())
    except BusError as exc:
        _fail(str(exc), 1)
    except NoExecutor as exc:
        _fail(str(exc), 1)
    except asyncio.CancelledError:
        _fail("agent stopped without waiting for its running steps", 1)


def _die_with(parent: int) -> None:
    """The agent ends when `sluice up` does, however `up` ends (SIGKILL included), so that local
    agents never outlive it and meet their successors: Linux sends it SIGTERM when its parent dies
    (PR_SET_PDEATHSIG), and a parent gone before that was set means at once."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(0)


async def _stop_when_orphaned(stop: asyncio.Event, parent: int) -> None:
    """Set ``stop`` once the parent process has gone, where no signal says so (not Linux)."""
    while os.getppid() == parent:  # noqa: ASYNC110 - no event says the parent died: poll
        await asyncio.sleep(PARENT_CHECK_INTERVAL_S)
    stop.set()


class NoExecutor(Exception):
    """``--executor docker`` on a machine where no Docker engine answers."""


async def available_executors(choice: str, docker_network: str | None = None) -> dict[str, Executor]:
    """The executors ``--executor choice`` gives on this machine: process unless ``docker``; docker
    where an engine answers (auto), or else ``NoExecutor`` (docker)."""
    executors: dict[str, Executor] = {}
    if choice in ("process", "auto"):
        executors["process"] = ProcessExecutor()
    if choice in ("docker", "auto"):
        client = await connect_docker()
        if client is not None:
            executors["docker"] = DockerExecutor(client, network=docker_network)
        elif choice == "docker":
            raise NoExecutor("--executor docker: no Docker engine answers (is dockerd running?)")
    return executors


def _default_cache_dir() -> Path:
    if data_dir := os.environ.get("SLUICE_DATA_DIR"):
        return Path(data_dir) / "agent-cache"
    return Path.home() / ".cache" / "sluice"


def _fail(message: str, status: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(status)
