"""Lineage with a real `sluice up`: after a three-step pipeline, `sluice lineage` finds who read a
datastore path (with the fingerprint each saw) and which step wrote an output; after the data changes,
both fingerprints appear, each with its run; `runs show` lists each step's inputs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.sluice import SluiceUp, apply, cli, cli_json

pytestmark = pytest.mark.e2e

COPY = "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True)"

DOCUMENTS = """
kind: Datastore
name: landing
type: local
path: {landing}
---
kind: Pipeline
name: chain
steps:
  - name: a
    command: [python3, -c, "{copy}", "${{inputs.raw}}", "${{outputs.out}}"]
    inputs:
      raw: {{datastore: landing, path: data/day1}}
    outputs: [out]
  - name: b
    command: [python3, -c, "{copy}", "${{inputs.x}}", "${{outputs.out}}"]
    inputs:
      x: ${{steps.a.outputs.out}}
    outputs: [out]
  - name: c
    command: [python3, -c, "{copy}", "${{inputs.x}}", "${{outputs.out}}"]
    inputs:
      x: ${{steps.b.outputs.out}}
      again: {{datastore: landing, path: data/day1}}
    outputs: [out]
"""


def run_chain(env: dict[str, str]) -> tuple[str, dict[str, dict]]:
    started = cli("run", "chain", "--wait", env=env)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[0]
    shown = cli_json("runs", "show", run_id, env=env)
    return run_id, {step["name"]: step for step in shown["steps"]}


def lineage(target: str, env: dict[str, str]) -> dict:
    return cli_json("lineage", target, env=env)


def reads(answer: dict) -> set[tuple[str, str, str, str]]:
    """(run, step, input, fingerprint) of each reader."""
    return {
        (item["run_id"], item["step"], item["input"]["name"], item["input"]["fingerprint"])
        for item in answer["items"]
    }


def get(sluice: SluiceUp, path: str, token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{sluice.api_url}/api/v1{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_lineage_finds_the_readers_and_the_writer_of_a_path(sluice_up, tmp_path: Path) -> None:
    sluice = sluice_up()
    env = sluice.client_env
    day1 = tmp_path / "landing" / "data" / "day1"
    day1.mkdir(parents=True)
    (day1 / "x.csv").write_text("1,2\n")
    apply(DOCUMENTS.format(landing=tmp_path / "landing", copy=COPY), env)

    first, steps = run_chain(env)
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys("abc", "succeeded")
    seen = steps["a"]["inputs"][0]["fingerprint"]
    assert seen.startswith("sha256:")
    assert steps["a"]["inputs"] == [
        {"name": "raw", "datastore": "landing", "path": "data/day1", "fingerprint": seen}
    ]
    [from_a] = steps["b"]["inputs"]
    assert (from_a["datastore"], from_a["path"]) == ("default", f"runs/{first}/a/out")
    assert from_a["from"] == {"run_id": first, "step": "a", "output": "out"}
    assert {item["name"]: item["fingerprint"] for item in steps["c"]["inputs"]}["again"] == seen
    shown = cli("runs", "show", first, env=env)
    assert "DATASTORE:PATH" in shown.stdout
    assert "landing:data/day1" in shown.stdout
    assert seen in shown.stdout

    assert reads(lineage("landing:data", env)) == {(first, "a", "raw", seen), (first, "c", "again", seen)}
    # A file under what the steps read was read by them; a sibling whose name merely starts alike was not.
    assert {item["step"] for item in lineage("landing:data/day1/x.csv", env)["items"]} == {"a", "c"}
    assert lineage("landing:data/day", env)["items"] == []
    text = cli("lineage", "landing:data", env=env)
    assert text.returncode == 0, text.stderr
    assert seen in text.stdout
    assert "chain v1" in text.stdout

    written = lineage(f"default:runs/{first}/a/out", env)
    assert {key: written["writer"][key] for key in ("run_id", "step", "output", "status")} == {
        "run_id": first,
        "step": "a",
        "output": "out",
        "status": "succeeded",
    }
    assert [(item["run_id"], item["step"]) for item in written["items"]] == [(first, "b")]
    text = cli("lineage", f"default:runs/{first}/a/out", env=env)
    assert "written by" in text.stdout
    assert "output out of step a" in text.stdout

    (day1 / "x.csv").write_text("1,2,3\n")
    second, again = run_chain(env)
    changed = again["a"]["inputs"][0]["fingerprint"]
    assert changed != seen
    assert reads(lineage("landing:data", env)) == {
        (first, "a", "raw", seen),
        (first, "c", "again", seen),
        (second, "a", "raw", changed),
        (second, "c", "again", changed),
    }
    # Paged, newest first: the second run's readers come before the first's.
    page = get(sluice, "/lineage?datastore=landing&path=data&limit=2", sluice_token(sluice))[1]
    assert {item["run_id"] for item in page["items"]} == {second}
    assert page["next_cursor"]


def sluice_token(sluice: SluiceUp) -> str:
    return (sluice.data_dir / "credentials" / "api-token").read_text().strip()


def test_lineage_takes_a_read_token_and_refuses_bad_input(sluice_up, tmp_path: Path) -> None:
    sluice = sluice_up("--agents", "0")
    env = sluice.client_env
    made = cli("tokens", "create", "reader", "--scope", "read", env=env)
    assert made.returncode == 0, made.stderr
    reader = made.stdout.strip()

    assert get(sluice, "/lineage?datastore=default&path=runs", None)[0] == 401
    status, body = get(sluice, "/lineage?datastore=default&path=runs", reader)
    assert (status, body["items"], body["writer"]) == (200, [], None)
    status, body = get(sluice, "/lineage?datastore=nowhere&path=x", reader)
    assert (status, body["error"]["code"]) == (404, "not_found")
    for bad in ("../etc", "/etc", "a/../../b"):
        status, body = get(sluice, f"/lineage?datastore=default&path={bad}", reader)
        assert (status, body["error"]["message"][:5]) == (400, "path:"), body
    status, body = get(sluice, "/lineage?path=x", reader)
    assert status == 400
    assert "datastore" in body["error"]["message"]

    refused = cli("lineage", "default", env=env)
    assert refused.returncode == 2
    assert "DATASTORE:PATH" in refused.stderr
    missing = cli("lineage", "nowhere:x", env=env)
    assert missing.returncode == 2  # bad input, as every 4xx answer is to the CLI
    assert "datastore nowhere does not exist" in missing.stderr
