"""Sluice on a three-server NATS cluster while servers and the leading daemon are killed with -9
(``tests/e2e/cluster.py`` says how): every event becomes exactly one run and every run succeeds.
How long dispatch stopped after each kill is measured and printed (``-s``) and written to
``cluster-figures.json`` in the test's directory; ``tests/bench/bench_cluster.py`` runs the same."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.e2e.cluster import failover, installation
from tests.e2e.sluice import cli, user_env

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
def test_every_event_is_one_successful_run_while_nats_servers_and_the_leader_die(
    tmp_path: Path, database_url: str
) -> None:
    with installation(tmp_path, database_url) as system:
        outcome = asyncio.run(failover(system))

    figures = outcome.figures()
    (tmp_path / "cluster-figures.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    per_event = outcome.runs_per_event()
    missing = sorted(set(outcome.published) - set(per_event))
    doubled = sorted(n for n, count in per_event.items() if count > 1)
    assert not missing, f"{len(missing)} events made no run: {missing[:20]}"
    assert not doubled, f"{len(doubled)} events made several runs: {doubled[:20]}"
    assert set(per_event) == set(outcome.published)
    failed = [run for run in outcome.runs if run["status"] != "succeeded"]
    assert not failed, failed[:5]
    assert {event["outcome"] for event in outcome.trigger_events} <= {"run", "duplicate"}
    assert set(outcome.stream_replicas.values()) == {3}
    assert len(outcome.kills) == 3


def test_replicas_beyond_one_need_a_nats_cluster(tmp_path: Path) -> None:
    env = user_env(tmp_path / "home") | {
        "SLUICE_NATS_REPLICAS": "3",
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
    }

    result = cli("daemon", env=env)

    assert result.returncode == 2
    assert "SLUICE_NATS_REPLICAS=3 needs a NATS cluster (SLUICE_NATS_URL)" in result.stderr
