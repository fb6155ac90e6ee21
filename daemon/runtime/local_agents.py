"""The agents `sluice up --agents N` runs beside the daemon: child processes of `sluice agent`.

Each is a separate process, as in production, so a step's process group, a crash or a slow log
consumer cannot disturb the daemon. The machine's CPUs and memory are shared out between them so
that together they never offer more than there is; GPUs go to the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import psutil
import structlog

log = structlog.get_logger(__name__)

STOP_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 5.0


def agent_names(count: int) -> list[str]:
    """The names of ``count`` local agents: ``local``, or ``local-1`` … ``local-N``."""
    return ["local"] if count == 1 else [f"local-{index}" for index in range(1, count + 1)]


def agent_argv(index: int, count: int, cache_root: Path) -> list[str]:
    """The command line of local agent ``index`` (1-based) of ``count``."""
    name = agent_names(count)[index - 1]
    cpus = max((os.cpu_count() or 1) / count, 0.1)
    memory = psutil.virtual_memory().total // count
    return [
        sys.executable,
        "-m",
        "runners",
        "--name",
        name,
        "--cpus",
        f"{cpus:g}",
        "--memory",
        str(memory),
        "--gpus",
        "auto" if index == 1 else "0",
        "--cache-dir",
        str(cache_root / name),
        "--drain-timeout",
        str(DRAIN_TIMEOUT_S),
        "--parent-pid",
        str(os.getpid()),
    ]


@contextlib.asynccontextmanager
async def local_agents(
    count: int, nats_url: str, data_dir: Path, creds: Mapping[str, Path]
) -> AsyncIterator[None]:
    """Run ``count`` agents joined to ``nats_url`` (each with its ``creds`` file, by name, where
    given) while the block runs; stop them on the way out (SIGTERM, so running steps get
    ``DRAIN_TIMEOUT_S`` to finish, then SIGKILL after a bound)."""
    env = {**os.environ, "SLUICE_NATS_URL": nats_url}
    processes: list[asyncio.subprocess.Process] = []
    try:
        for index, name in enumerate(agent_names(count), start=1):
            argv = agent_argv(index, count, data_dir / "agents")
            agent_env = env | ({"SLUICE_NATS_CREDS": str(creds[name])} if name in creds else {})
            # Their own session: a Ctrl-C in the terminal reaches `up` alone, which stops them once.
            processes.append(
                await asyncio.create_subprocess_exec(*argv, env=agent_env, start_new_session=True)
            )
            log.info("local_agent_started", agent=argv[argv.index("--name") + 1], pid=processes[-1].pid)
        yield
    finally:
        await asyncio.shield(_stop(processes))


async def _stop(processes: list[asyncio.subprocess.Process]) -> None:
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("local_agent_kill", pid=process.pid, timeout_s=STOP_TIMEOUT_S)
            process.kill()
            await process.wait()
