"""Steps that can never work end once, with the reason on the step: an input reached through a
symlink out of its datastore, an assignment too large for NATS. Neither loops, and neither holds its
pipeline's concurrency slot."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.sluice import api_request, apply, cli, get_run, start_run, steps_of, wait_run

pytestmark = pytest.mark.e2e


def test_a_symlink_out_of_a_datastore_is_refused(sluice_up, tmp_path: Path) -> None:
    landing, outside = tmp_path / "landing", tmp_path / "outside"
    (landing / "in").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("not for steps\n")
    os.symlink(outside / "secret.txt", landing / "in" / "secret.txt")
    sluice = sluice_up()
    env = sluice.client_env
    apply(
        f"""
kind: Datastore
name: landing
type: local
path: {landing}
---
kind: Pipeline
name: reads
steps:
  - name: read
    command: [cat, "${{inputs.raw}}/secret.txt"]
    inputs:
      raw: {{datastore: landing, path: in, hash: content}}
""",
        env,
    )

    run = wait_run(start_run("reads", env), env, ("succeeded", "failed"), timeout=30)

    step = steps_of(run)["read"]
    assert run["status"] == "failed"
    (attempt,) = step["attempts"]
    assert "leads out of the attempt's datastores" in attempt["error"]
    assert str(outside / "secret.txt") in attempt["error"]
    assert "a symlink takes it out of its datastore" in step["reuse"]["reason"]
    logs = cli("runs", "logs", run["id"], "read", env=env).stdout
    assert "not for steps" not in logs


def test_an_assignment_too_large_for_nats_fails_once_and_frees_its_slot(sluice_up, base_env) -> None:
    # Params may weigh 2 MiB here: more than NATS carries in one message (1 MiB).
    sluice = sluice_up(env=base_env | {"SLUICE_PARAMS_MAX_BYTES": "2Mi", "SLUICE_API_MAX_BODY": "4Mi"})
    env = sluice.client_env
    apply(
        """
kind: Pipeline
name: heavy
concurrency: {max_active_runs: 1, on_limit: queue}
params:
  blob: {type: string, default: ""}
steps:
  - name: carry
    command: ["true", "${params.blob}"]
""",
        env,
    )
    # A 1.5 MB parameter: too large for a command line (the CLI's -p), so over HTTP.
    request = api_request(
        "/pipelines/heavy/runs",
        env,
        data=json.dumps({"params": {"blob": "x" * 1_500_000}}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        big = json.load(response)["run_id"]
    light = start_run("heavy", env)

    run = wait_run(big, env, ("failed",), timeout=30)
    (attempt,) = steps_of(run)["carry"]["attempts"]
    assert "more than NATS takes" in attempt["error"]
    assert wait_run(light, env, ("succeeded",), timeout=30)["status"] == "succeeded"
    assert len(steps_of(get_run(big, env))["carry"]["attempts"]) == 1  # never sent again
