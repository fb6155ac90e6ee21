"""What the benchmarks share: a `sluice up` of their own on a scratch data dir, and timing helpers."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

from daemon.runtime.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from daemon.trust import authority, permissions
from daemon.trust.authority import Trust
from daemon.trust.claims import Permissions
from daemon.trust.permissions import ServiceGrant
from kit.nats import NatsOptions, raw_credentials

SLUICE = str(Path(sys.executable).parent / "sluice")


def scratch_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    return env | {"HOME": str(home), "SLUICE_LOG_FORMAT": "json"}


def wait_ready(api_url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{api_url} not ready within {timeout} s")


@contextmanager
def sluice_up(data_dir: Path, env: dict[str, str], *options: str):
    """Yield (process, api_url, seconds to ready) for a `sluice up` on ``data_dir`` (with ``options``,
    such as ``--agents 0``); stop it after."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [SLUICE, "up", "--data-dir", str(data_dir), "--port", str(port), *options],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(api_url)
        yield process, api_url, time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(60)


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "min": round(ordered[0], 4),
        "p50": round(statistics.median(ordered), 4),
        "max": round(ordered[-1], 4),
    }


def report(name: str, figures: dict) -> None:
    print(json.dumps({"benchmark": name, **figures}, indent=2))


def temp_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="sluice-bench-"))


@dataclass(frozen=True)
class Bus:
    """The benchmarks' NATS, closed as `sluice up`'s is: each party connects with credentials of its
    role, so that what is measured includes authentication and the server's subject checks."""

    url: str
    trust: Trust
    root: Path

    def daemon(self) -> NatsOptions:
        return NatsOptions(self.url, creds=raw_credentials(self.trust.daemon_creds()))

    def agent(self, name: str) -> NatsOptions:
        return NatsOptions(self.url, creds=raw_credentials(self.trust.user(name, permissions.agent(name))[1]))

    def admin(self) -> NatsOptions:
        """For what the benchmark itself does beside the parties: streams, control messages."""
        return NatsOptions(self.url, creds=raw_credentials(self.trust.user("bench", permissions.admin())[1]))

    def creds_file(self, name: str, role: Permissions) -> Path:
        """A ``.creds`` file for a peer in a process of its own."""
        path = self.root / f"{name}.creds"
        path.write_text(self.trust.user(name, role)[1])
        return path

    def service_creds_file(self, name: str) -> Path:
        """A peer service's: it may publish on any subject outside Sluice's own."""
        return self.creds_file(name, permissions.service(ServiceGrant(publish=(">",))))


@asynccontextmanager
async def embedded_servers(root: Path) -> AsyncIterator[tuple[EmbeddedPostgres, Bus]]:
    """PostgreSQL and NATS (in operator mode, with a trust of its own) under ``root``, started at
    once, for benchmarks that run the daemon's parts in-process; both stop on the way out."""
    trust = authority.new_trust()
    postgres = EmbeddedPostgres(root / "pg")
    nats_server = EmbeddedNats(root / "nats", trust=(trust.server_config, trust.account))
    await asyncio.gather(asyncio.to_thread(postgres.start), asyncio.to_thread(nats_server.start))
    try:
        yield postgres, Bus(nats_server.url, trust, root)
    finally:
        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(postgres.stop)
