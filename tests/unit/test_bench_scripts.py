"""The benchmarks are run on purpose, not by CI: this keeps them importable, so that a module moved
under them is noticed when it moves, not when someone next measures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(path.stem for path in BENCH.glob("bench_*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_benchmark_script_imports(script: str) -> None:
    # As `python tests/bench/<script>.py` runs it: its folder first on the path, __main__ not run.
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import {script}"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=BENCH.parents[1], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
