"""`sluice up` → ready (first start on an empty data dir, and restart), and the daemon's idle memory.

Run: .venv/bin/python tests/bench/bench_up.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import psutil
from harness import report, scratch_env, sluice_up, summary, temp_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    args = parser.parse_args()

    first, restart, rss = [], [], []
    for _ in range(args.rounds):
        root = temp_dir()
        env = scratch_env(root / "home")
        with sluice_up(root / "data", env) as (_, _, seconds):
            first.append(seconds)
        with sluice_up(root / "data", env) as (process, _, seconds):
            restart.append(seconds)
            time.sleep(args.idle_seconds)
            rss.append(psutil.Process(process.pid).memory_info().rss / 2**20)
    report(
        "sluice-up",
        {
            "first_start_to_ready_s": summary(first),
            "restart_to_ready_s": summary(restart),
            "daemon_idle_rss_mib": summary(rss),
            "note": "idle RSS of the sluice process alone; embedded PostgreSQL and NATS run apart",
        },
    )


if __name__ == "__main__":
    main()
