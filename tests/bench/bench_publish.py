"""Publishing a 100-step pipeline with a 10 MB source directory through `sluice apply`.

Measures a first publish (new content: snapshot, upload, validate, commit), and re-applying identical
content (snapshot and digest only; nothing uploaded or written).
Run: .venv/bin/python tests/bench/bench_publish.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from harness import SLUICE, report, scratch_env, sluice_up, summary, temp_dir

STEPS = 100
SOURCE_BYTES = 10 * 2**20
SOURCE_FILES = 200


def write_pipeline(directory: Path, round_: int) -> Path:
    source = directory / "src"
    source.mkdir(parents=True, exist_ok=True)
    for index in range(SOURCE_FILES):
        (source / f"module_{index:03}.bin").write_bytes(os.urandom(SOURCE_BYTES // SOURCE_FILES))
    (source / "round.txt").write_text(str(round_))
    lines = ["kind: Pipeline", "name: wide", "source: ./src", "params:", "  date: {type: string}", "steps:"]
    for index in range(STEPS):
        lines += [
            f"  - name: step-{index:03}",
            f"    command: [python3, run.py, '${{params.date}}', '{index}']",
            f"    outputs: [out{index}]",
        ]
        if index:
            lines += [f"    inputs: {{prev: '${{steps.step-{index - 1:03}.outputs.out{index - 1}}}'}}"]
    path = directory / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def timed_apply(path: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [SLUICE, "apply", "-f", str(path)], env=env, capture_output=True, text=True, check=True
    )
    return time.perf_counter() - started, result.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = temp_dir()
    env = scratch_env(root / "home")
    publish, unchanged = [], []
    with sluice_up(root / "data", env) as (_, api_url, _):
        env |= {"SLUICE_API_URL": api_url}
        for round_ in range(args.rounds):
            path = write_pipeline(root / "pipeline", round_)
            seconds, output = timed_apply(path, env)
            assert output == f"pipeline/wide published v{round_ + 1}", output
            publish.append(seconds)
            seconds, output = timed_apply(path, env)
            assert "unchanged" in output, output
            unchanged.append(seconds)
    report(
        "publish-100-steps-10MB-source",
        {
            "publish_s": summary(publish),
            "reapply_unchanged_s": summary(unchanged),
            "note": "wall time of the `sluice apply` process, CLI start-up included",
        },
    )


if __name__ == "__main__":
    main()
