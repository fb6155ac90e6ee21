"""Publishing, end to end with real processes: publish versioned pipelines into `sluice up`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.sluice import api_get, cli, cli_json

EXAMPLE = Path(__file__).parents[2] / "examples" / "batch-scoring"
pytestmark = pytest.mark.e2e


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A private copy of the batch-scoring example, free to edit."""
    return Path(shutil.copytree(EXAMPLE, tmp_path / "batch-scoring"))


def test_publish_unchanged_and_new_version_after_a_source_edit(sluice_up, example: Path) -> None:
    sluice = sluice_up()
    env = sluice.client_env

    first = cli("apply", "-f", str(example), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "datastore/landing created",
        "pipeline/batch-scoring published v1",
        "trigger/nightly-scoring created",
    ]

    again = cli("apply", "-f", str(example), env=env)
    assert again.returncode == 0, again.stderr
    assert "pipeline/batch-scoring unchanged (v1)" in again.stdout.splitlines()
    assert "trigger/nightly-scoring unchanged" in again.stdout.splitlines()

    script = example / "scoring" / "report.py"
    script.write_text(script.read_text() + "# tweak\n")
    edited = cli("apply", "-f", str(example / "pipeline.yaml"), env=env)
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.splitlines() == ["pipeline/batch-scoring published v2"]

    versions = cli_json("versions", "batch-scoring", env=env)["items"]
    assert [(v["version"], v["is_default"]) for v in versions] == [(2, True), (1, False)]
    assert versions[0]["digest"] != versions[1]["digest"]
    table = cli("versions", "batch-scoring", env=env)
    assert table.returncode == 0
    assert "2" in table.stdout
    assert "active" in table.stdout

    over_http = api_get("/pipelines/batch-scoring/versions", env)["items"]
    assert [(v["version"], v["is_default"]) for v in over_http] == [(2, True), (1, False)]
    assert api_get("/pipelines/batch-scoring", env)["default_version"] == 2


def test_versions_survive_a_clean_restart_and_a_kill(sluice_up, example: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    sluice = sluice_up(data_dir=data_dir)
    assert cli("apply", "-f", str(example), env=sluice.client_env).returncode == 0
    assert sluice.stop() == 0

    sluice = sluice_up(data_dir=data_dir)
    versions = cli_json("versions", "batch-scoring", env=sluice.client_env)["items"]
    assert [v["version"] for v in versions] == [1]

    sluice.kill()  # PostgreSQL and NATS are left running, as after a crash
    sluice = sluice_up(data_dir=data_dir)
    versions = cli_json("versions", "batch-scoring", env=sluice.client_env)["items"]
    assert [v["version"] for v in versions] == [1]
    assert cli("apply", "-f", str(example), env=sluice.client_env).stdout.count("unchanged") == 3


def test_broken_documents_are_all_reported_and_nothing_is_applied(sluice_up, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cycle.yaml").write_text(
        "kind: Pipeline\nname: loop\nsteps:\n"
        "  - name: a\n    command: [echo, a]\n    after: [b]\n"
        "  - name: b\n    command: [echo, b]\n    after: [a]\n"
    )
    (broken / "refs.yaml").write_text(
        "kind: Pipeline\nname: refs\nsteps:\n"
        "  - name: a\n    command: [echo, '${params.missing}']\n"
        "    inputs:\n      raw: {datastore: nowhere, path: x}\n"
        "    resources: {memory: 4Gx}\n"
        "    colour: blue\n"
    )
    (broken / "cron.yaml").write_text(
        'kind: Trigger\nname: bad-cron\npipeline: loop\non:\n  cron: "61 * * * *"\n'
    )
    (broken / "good.yaml").write_text("kind: Datastore\nname: fine\ntype: local\npath: /tmp/fine\n")
    sluice = sluice_up()

    result = cli("apply", "-f", str(broken), env=sluice.client_env)

    assert result.returncode == 2
    errors = result.stderr
    assert "cycle.yaml:" in errors
    assert "cycle" in errors
    assert "refs.yaml:" in errors
    assert "cron.yaml:5 on.cron" in errors
    assert "Traceback" not in errors
    assert cli_json("pipelines", env=sluice.client_env)["items"] == []
    assert [d["name"] for d in cli_json("datastores", env=sluice.client_env)["items"]] == ["default"]


def test_version_lifecycle_from_the_cli(sluice_up, example: Path) -> None:
    sluice = sluice_up()
    env = sluice.client_env
    assert cli("apply", "-f", str(example), env=env).returncode == 0
    (example / "scoring" / "score.py").write_text("print('v2')\n")
    assert cli("apply", "-f", str(example), "--no-default", env=env).returncode == 0

    refused = cli("disable", "batch-scoring", "1", env=env)
    assert refused.returncode == 1
    assert "default" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    assert cli("disable", "batch-scoring", "2", env=env).returncode == 0
    assert cli("default", "batch-scoring", "2", env=env).returncode == 1  # disabled: enable first
    assert cli("enable", "batch-scoring", "2", env=env).returncode == 0
    assert cli("default", "batch-scoring", "2", env=env).returncode == 0
    assert cli("deprecate", "batch-scoring", "1", env=env).returncode == 0
    versions = {v["version"]: v for v in cli_json("versions", "batch-scoring", env=env)["items"]}
    assert (versions[1]["status"], versions[1]["is_default"]) == ("deprecated", False)
    assert (versions[2]["status"], versions[2]["is_default"]) == ("active", True)

    missing = cli("default", "batch-scoring", "9", env=env)
    assert missing.returncode == 2
    assert "9" in missing.stderr


def test_listening_beyond_loopback_needs_a_token(base_env: dict[str, str], tmp_path: Path) -> None:
    result = cli("daemon", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d"), env=base_env, timeout=30)
    assert result.returncode == 2
    assert "SLUICE_API_TOKEN" in result.stderr
