"""Plans with real `sluice` processes: `sluice plan` and `sluice triggers test` say what a run would
be — version, params, each step reused or executed, the agent — and the run made afterwards does
exactly that; a plan writes nothing (no run, event, step, attempt, claimed capacity, link)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.sluice import api_all, api_get, api_request, apply, cli, cli_json, start_run, wait_for

pytestmark = pytest.mark.e2e

WRITE = "import os, sys; open(os.path.join(sys.argv[1], 'x'), 'w').write(sys.argv[2])"
CHAIN = f"""
kind: Pipeline
name: chain
params:
  size: {{type: integer, default: 3}}
  label: {{type: string, default: a}}
defaults: {{resources: {{cpu: 0.5, memory: 64Mi}}}}
steps:
  - name: fetch
    command: [python3, -c, "{WRITE}", "${{outputs.o}}", "${{params.size}}"]
    outputs: [o]
  - name: train
    command: [python3, -c, "{WRITE}", "${{outputs.o}}", "${{inputs.i}}"]
    inputs: {{i: "${{steps.fetch.outputs.o}}"}}
    outputs: [o]
  - name: report
    command: [python3, -c, "{WRITE}", "${{outputs.o}}", "${{params.label}}"]
    inputs: {{i: "${{steps.train.outputs.o}}"}}
    outputs: [o]
"""
SLOW = """
kind: Pipeline
name: {name}
concurrency: {{max_active_runs: 1, on_limit: {on_limit}}}
steps:
  - name: wait
    command: [python3, -c, "import time; time.sleep(60)"]
    resources: {{cpu: 0.1, memory: 16Mi}}
"""
HUGE = """
kind: Pipeline
name: huge
steps:
  - name: crunch
    command: [python3, -c, "pass"]
    resources: {cpu: 64}
"""
OLD = """
kind: Pipeline
name: old
description: {description}
steps:
  - name: one
    command: [python3, -c, "pass"]
"""


def post(env: dict[str, str], api_path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = api_request(api_path, env, data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def written(env: dict[str, str]) -> dict:
    """What a plan must leave as it was: runs with their steps and attempts, agents' free capacity."""
    runs = [api_get(f"/runs/{run['id']}", env) for run in api_all("/runs", env)]
    return {
        "runs": sorted(run["id"] for run in runs),
        "steps": sum(len(run["steps"]) for run in runs),
        "attempts": sum(len(step["attempts"]) for run in runs for step in run["steps"]),
        "free": {agent["name"]: agent["free"] for agent in api_get("/agents", env)["items"]},
    }


def test_a_plan_is_what_the_run_then_does(sluice_daemon, sluice_agent, tmp_path: Path) -> None:
    env = sluice_daemon.client_env
    sluice_agent(sluice_daemon, "worker", "--cpus", "2", "--memory", "2Gi", "--gpus", "0")
    apply(CHAIN, env)
    first = cli("run", "chain", "--wait", env=env)
    assert first.returncode == 0, first.stderr
    first_id = first.stdout.split()[0]

    before = written(env)
    links = sorted(
        p.relative_to(sluice_daemon.data_dir) for p in sluice_daemon.data_dir.rglob("*") if p.is_symlink()
    )
    plan = cli_json("plan", "chain", "-p", "label=b", env=env)
    assert written(env) == before
    assert (
        sorted(
            p.relative_to(sluice_daemon.data_dir) for p in sluice_daemon.data_dir.rglob("*") if p.is_symlink()
        )
        == links
    )
    assert (plan["outcome"], plan["version"], plan["resolution"], plan["written"]) == (
        "run",
        1,
        "default",
        False,
    )
    assert plan["params"] == {"size": 3, "label": "b"}
    steps = {step["name"]: step for step in plan["steps"]}
    assert [steps[s]["status"] for s in ("fetch", "train", "report")] == ["reused", "reused", "ready"]
    assert {steps[s]["reused_from"]["run_id"] for s in ("fetch", "train")} == {first_id}
    assert steps["report"]["reuse"]["changed"] == ["parameter label"]
    assert steps["report"]["agent"] == "worker"
    assert steps["report"]["waiting"] is None

    table = cli("plan", "chain", "-p", "label=b", env=env)
    assert table.returncode == 0, table.stderr
    assert "REUSE" in table.stdout
    assert "worker" in table.stdout
    assert "parameter label" in table.stdout
    print(table.stdout)

    second = cli("run", "chain", "-p", "label=b", "--wait", env=env)
    assert second.returncode == 0, second.stderr
    run = cli_json("runs", "show", second.stdout.split()[0], env=env)
    assert (run["version"], run["params"], run["resolution"]) == (
        plan["version"],
        plan["params"],
        plan["resolution"],
    )
    for step in run["steps"]:
        planned = steps[step["name"]]
        assert step["status"] == ("reused" if planned["status"] == "reused" else "succeeded")
        assert step["fingerprint"] == planned["fingerprint"]
        assert step["reuse"]["outcome"] == planned["reuse"]["outcome"]
        assert step["reuse"]["reused_from"] == planned["reused_from"]
        assert step["reuse"]["changed"] == planned["reuse"]["changed"]
        assert [a["agent"] for a in step["attempts"]] == ([planned["agent"]] if planned["agent"] else [])

    # Bad input: a named param, a named pipeline, a clear 4xx, never a traceback.
    bad = cli("plan", "chain", "-p", "size=many", env=env)
    assert bad.returncode == 2
    assert "size" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert post(env, "/pipelines/chain/plan", {"params": {"nosuch": 1}})[0] == 422
    missing = cli("plan", "nosuch", env=env)
    assert missing.returncode == 2
    assert "nosuch" in missing.stderr
    assert post(env, "/pipelines/nosuch/plan", {})[0] == 404

    # The scope: a read token may not plan (a plan reads and hashes data); a run token may.
    tokens = {
        s: cli("tokens", "create", f"t-{s}", "--scope", s, env=env).stdout.strip() for s in ("read", "run")
    }
    assert post(env, "/pipelines/chain/plan", {}, token=tokens["read"])[0] == 403
    assert post(env, "/triggers/nosuch/test", {}, token=tokens["read"])[0] == 403
    assert post(env, "/pipelines/chain/plan", {}, token=tokens["run"])[0] == 200

    # A step no agent is big enough for waits, with the reason.
    apply(HUGE, env)
    [crunch] = cli_json("plan", "huge", env=env)["steps"]
    assert crunch["agent"] is None, crunch
    assert "needs 64 CPUs" in crunch["waiting"], crunch

    # A disabled version is refused with the reason.
    apply(OLD.format(description="one"), env)
    apply(OLD.format(description="two"), env)
    assert cli("disable", "old", "1", env=env).returncode == 0
    old = cli_json("plan", "old", "--version", "1", env=env)
    assert old["outcome"] == "rejected"
    assert "disabled" in old["reason"]

    # At the concurrency limit: queue holds, skip skips.
    for name, on_limit in (("slowq", "queue"), ("slows", "skip")):
        apply(SLOW.format(name=name, on_limit=on_limit), env)
        run_id = start_run(name, env)
        wait_for(lambda run_id=run_id: api_get(f"/runs/{run_id}", env)["status"] == "running", timeout=30)
    before = written(env)
    held = cli_json("plan", "slowq", env=env)
    skipped = cli_json("plan", "slows", env=env)
    assert written(env) == before
    assert held["outcome"] == "held"
    assert "held" in held["steps"][0]["waiting"]
    assert skipped["outcome"] == "skipped"
    assert "max_active_runs 1" in skipped["reason"]
