"""Agent lost → its step running again elsewhere, in seconds (target: heartbeat timeout + 1 s).

Everything runs in this process against embedded PostgreSQL and NATS, with the daemon's default
timings (``runners.protocol``: heartbeats every ``HEARTBEAT_INTERVAL_S``, lost after
``HEARTBEAT_TIMEOUT_S`` of silence). Each round, on a fresh database: a fake agent (a real NATS peer,
``tests/integration/fake_agent.py``) accepts a one-step run and holds it; a second agent joins; the
first goes silent as a killed agent does. Measured: from the first agent's last heartbeat to the second
agent having accepted the step's new attempt.

Run: .venv/bin/python tests/bench/bench_lost_agent.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

from daemon.config import DispatchSettings
from daemon.runtime.embedded import EmbeddedPostgres
from kit.logsetup import configure_logging
from runners.protocol import HEARTBEAT_INTERVAL_S
from tests.bench.bench_dispatch import System
from tests.bench.harness import Bus, embedded_servers, report, temp_dir
from tests.integration.fake_agent import Outcome


async def one_round(postgres: EmbeddedPostgres, nats: Bus, root: Path, index: int) -> float:
    """Seconds from the lost agent's last heartbeat to the step accepted by the other agent."""
    async with System(postgres, nats, root, f"lost_{index}") as system:
        (first,) = await system.agents(1, 4.0, lambda assignment: Outcome(hold=True), prefix="doomed")
        last_beat = time.perf_counter()
        beat = first.beat

        async def recorded_beat() -> None:
            nonlocal last_beat
            last_beat = time.perf_counter()  # as it is sent: the daemon hears it a little later
            await beat()

        first.beat = recorded_beat  # type: ignore[method-assign]
        await system.start_run(0)
        while not first.accepted_at:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        (second,) = await system.agents(1, 4.0, lambda assignment: Outcome(hold=True), prefix="spare")
        # Silent from a random point between two beats, as a crash would be.
        await asyncio.sleep(HEARTBEAT_INTERVAL_S * (0.25 + 0.5 * (index % 2)))
        await first.stop()
        deadline = time.monotonic() + 60
        while not second.accepted_at:
            if time.monotonic() > deadline:
                raise TimeoutError("the step never ran again on the other agent")
            await asyncio.sleep(0.005)
        return next(iter(second.accepted_at.values())) - last_beat


async def main(args: argparse.Namespace) -> dict:
    root = temp_dir()
    async with embedded_servers(root) as (postgres, nats):
        samples = [await one_round(postgres, nats, root, index) for index in range(args.rounds)]
    timeout = DispatchSettings().heartbeat_timeout_s
    return {
        "heartbeat_timeout_s": timeout,
        "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
        "rounds": len(samples),
        "lost_to_running_elsewhere_s": [round(sample, 3) for sample in samples],
        "max_s": round(max(samples), 3),
        "target_s": timeout + 1.0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    configure_logging("json", level=logging.WARNING)
    report("lost_agent", asyncio.run(main(parser.parse_args())))
