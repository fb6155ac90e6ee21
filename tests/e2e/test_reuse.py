"""Output reuse through the CLI with a real `sluice up`: an unchanged re-run executes nothing, a
changed source file re-runs every step of the new version, `--no-reuse` re-runs all, and `runs show`
says why for each step."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.sluice import cli, cli_json

pytestmark = pytest.mark.e2e

PIPELINE = """
kind: Pipeline
name: twostep
source: ./code
steps:
  - name: make
    command: [python3, make.py, "${outputs.numbers}"]
    outputs: [numbers]
  - name: total
    command: [python3, total.py, "${inputs.numbers}"]
    inputs:
      numbers: ${steps.make.outputs.numbers}
"""

MAKE = """import pathlib, sys
pathlib.Path(sys.argv[1], "numbers.txt").write_text("1 2 3\\n")
"""

TOTAL = """import pathlib, sys
print(sum(int(n) for n in pathlib.Path(sys.argv[1], "numbers.txt").read_text().split()))
"""


def run_and_show(env: dict[str, str], *extra: str) -> tuple[str, dict[str, dict]]:
    started = cli("run", "twostep", "--wait", *extra, env=env)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[0]
    shown = cli("runs", "show", run_id, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "REUSE" in shown.stdout
    return run_id, {step["name"]: step for step in cli_json("runs", "show", run_id, env=env)["steps"]}


def test_reuse_follows_the_source_and_the_run_s_wish(sluice_up, tmp_path: Path) -> None:
    env = sluice_up().client_env
    code = tmp_path / "code"
    code.mkdir()
    (code / "make.py").write_text(MAKE)
    (code / "total.py").write_text(TOTAL)
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    assert cli("apply", "-f", str(tmp_path / "pipeline.yaml"), env=env).returncode == 0

    first_id, first = run_and_show(env)
    assert [step["status"] for step in first.values()] == ["succeeded", "succeeded"]

    _, again = run_and_show(env)
    assert [step["status"] for step in again.values()] == ["reused", "reused"]
    assert all(not step["attempts"] for step in again.values())
    assert {step["reuse"]["reused_from"]["run_id"] for step in again.values()} == {first_id}

    (code / "total.py").write_text(TOTAL.replace("sum(", "max("))
    applied = cli("apply", "-f", str(tmp_path / "pipeline.yaml"), env=env)
    assert "published v2" in applied.stdout, applied.stdout
    _, changed = run_and_show(env)
    assert [step["status"] for step in changed.values()] == ["succeeded", "succeeded"]
    assert changed["make"]["reuse"]["changed"] == ["source"]
    assert changed["total"]["reuse"]["changed"] == ["input numbers", "source"]

    _, forced = run_and_show(env, "--no-reuse")
    assert [step["status"] for step in forced.values()] == ["succeeded", "succeeded"]
    assert {step["reuse"]["outcome"] for step in forced.values()} == {"off"}
