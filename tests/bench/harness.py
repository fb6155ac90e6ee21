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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

from daemon.embedded import EmbeddedNats, EmbeddedPostgres, free_port

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
def sluice_up(data_dir: Path, env: dict[str, str]):
    """Yield (process, api_url, seconds to ready) for a `sluice up` on ``data_dir``; stop it after."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [SLUICE, "up", "--data-dir", str(data_dir), "--port", str(port)],
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


@asynccontextmanager
async def embedded_servers(root: Path) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """PostgreSQL and NATS under ``root``, started at once, for benchmarks that run the daemon's parts
    in-process: yields the PostgreSQL server and the NATS URL; both stop on the way out."""
    postgres, nats_server = EmbeddedPostgres(root / "pg"), EmbeddedNats(root / "nats")
    await asyncio.gather(asyncio.to_thread(postgres.start), asyncio.to_thread(nats_server.start))
    try:
        yield postgres, nats_server.url
    finally:
        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(postgres.stop)
