"""Sluice on a three-server NATS cluster while two servers and the leading daemon are killed with -9
(one after the other; ``tests/e2e/cluster.py`` has the scenario, which ``tests/e2e/test_cluster.py``
runs with assertions). Prints, per kill, how long dispatch stopped: the first step started of an
event sent after the kill, the longest pause between step starts, the slowest event sent in the 5 s
after it; and the events and runs counted.

Run: .venv/bin/python tests/bench/bench_cluster.py [--rate 4] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

from daemon.runtime.embedded import EmbeddedPostgres
from kit.logsetup import configure_logging
from tests.bench.harness import report, temp_dir
from tests.e2e.cluster import failover, installation


def main(args: argparse.Namespace) -> None:
    configure_logging("json", level=logging.WARNING)  # stdout is the figures' alone
    root = temp_dir()
    postgres = EmbeddedPostgres(root / "pg")
    postgres.start()
    try:
        rounds = []
        for number in range(args.rounds):
            database = f"cluster_{number}"
            asyncio.run(_create_database(postgres.dsn("postgres"), database))
            with installation(root / f"round-{number}", postgres.dsn(database)) as system:
                rounds.append(asyncio.run(failover(system, rate=args.rate)).figures())
        report("cluster", {"rate_per_kind_per_s": args.rate, "rounds": rounds, "data": str(root)})
    finally:
        postgres.stop()


async def _create_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=4.0, help="events per second of each kind")
    parser.add_argument("--rounds", type=int, default=1)
    main(parser.parse_args())
