"""The API under many generated requests: Schemathesis (coverage, fuzzing and stateful phases) over
`sluice up`'s OpenAPI document, as an admin; prints how many cases ran and how many got a server
error (the CI test runs a few hundred; this runs thousands).

Run: .venv/bin/python tests/bench/bench_fuzz.py [--examples 200]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

from tests.bench.harness import report, scratch_env, sluice_up, temp_dir
from tests.e2e.sluice import HELLO, fuzz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="cases per operation and phase")
    args = parser.parse_args()
    root = temp_dir()
    with sluice_up(root / "data", scratch_env(root / "home")) as (_, api_url, _):
        token = (root / "data" / "credentials" / "api-token").read_text().strip()
        request = urllib.request.Request(
            f"{api_url}/api/v1/apply",
            data=json.dumps({"documents": [{"file": "hello.yaml", "text": HELLO}]}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        started = time.perf_counter()
        result = fuzz(
            api_url, token, examples=args.examples, phases="coverage,fuzzing,stateful", timeout=3600
        )
        seconds = time.perf_counter() - started
    counted = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    report(
        "fuzz",
        {
            "cases": int(counted.group(1)) if counted else None,
            "passed": int(counted.group(2)) if counted else None,
            "server_errors_found": result.returncode != 0,
            "seconds": round(seconds, 1),
            "tail": result.stdout[-1500:] if result.returncode else "",
        },
    )


if __name__ == "__main__":
    main()
