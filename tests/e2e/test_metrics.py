"""`/metrics` of a real daemon follows what happens, end to end: a `sluice up` with one agent joined,
runs made by a JetStream `nats` trigger (one run succeeds, one fails, one event is rejected, one is
a duplicate past the stream's duplicate window), by a cron trigger and by hand (`sluice run`), and a
run whose step no agent can take, then cancelled. And the Grafana dashboard queries only series the
daemon exports."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType, StreamConfig
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.sluice import SluiceUp, api_get, apply, cli, start_run, wait_for, wait_run
from tests.promql import dashboard_queries, load_dashboard, metric_names

pytestmark = pytest.mark.e2e

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "sluice.json"
GIB = 1 << 30

DOCUMENTS = """
kind: Pipeline
name: meter
params:
  code: {type: integer}
  note: {type: string, default: ""}
steps:
  - name: work
    command: ["sh", "-c", "sleep 0.2; exit $1", "sh", "${params.code}", "${params.note}"]
    resources: {cpu: 1}
---
kind: Pipeline
name: tick
params:
  at: {type: string}
steps:
  - name: only
    command: ["true", "${params.at}"]
    resources: {cpu: 0.5}
---
kind: Pipeline
name: too-big
steps:
  - name: huge
    command: ["echo", "never runs: no agent has 8 cores"]
    resources: {cpu: 8}
---
kind: Trigger
name: orders
pipeline: meter
on:
  nats: {subject: "e2e.meter.orders", stream: METER}
params:
  code: "${event.data.code}"
---
kind: Trigger
name: every-second
pipeline: tick
on:
  cron: "* * * * * *"
  catchup: none
params:
  at: "${event.scheduled_time}"
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(daemon: SluiceUp) -> tuple[str, Samples]:
    """``/metrics`` (open, no token) as text and as samples keyed by (name, labels)."""
    with urllib.request.urlopen(f"{daemon.api_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 for a labelled series not exported (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_metrics(daemon: SluiceUp, check: Callable[[Samples], bool], timeout: float = 30.0) -> Samples:
    last: list[Samples] = []

    def met() -> bool:
        last[:] = [scrape(daemon)[1]]
        return check(last[0])

    try:
        wait_for(met, timeout=timeout, interval=0.2)
    except Exception:
        interesting = {
            (name, tuple(sorted(labels))): v
            for (name, labels), v in last[0].items()
            if name.startswith("sluice_") and not name.startswith("sluice_http") and "_bucket" not in name
        }
        raise AssertionError(f"metrics never matched; last: {interesting}") from None
    return last[0]


def run_scenario(sluice_daemon: SluiceUp, sluice_agent) -> tuple[str, Samples, str]:
    """The whole story; returns the last ``/metrics`` text, its samples and the agent's id."""
    daemon, env = sluice_daemon, sluice_daemon.client_env
    sluice_agent(daemon, "meter-box", "--cpus", "2", "--memory", "1Gi", "--gpus", "0")
    [agent] = api_get("/agents", env)["items"]
    _, before = scrape(daemon)
    assert value(before, "sluice_agents", state="ready") == 1
    assert value(before, "sluice_leader") == 1

    asyncio.run(apply_and_publish(daemon, env))
    manual = start_run("meter", env, "code=0", "note=by hand")  # not order-1's params: not reused
    wait_run(manual, env, ("succeeded",))
    # Enough cron fires, then no more: its counts stop moving.
    wait_metrics(
        daemon, lambda s: value(s, "sluice_runs_created_total", pipeline="tick", trigger_kind="cron") >= 2
    )
    assert cli("triggers", "pause", "every-second", env=env).returncode == 0

    big = start_run("too-big", env)
    waiting = wait_metrics(
        daemon,
        lambda s: (
            value(s, "sluice_steps_waiting") == 1
            and value(s, "sluice_steps_waiting_oldest_age_seconds") > 0.5
        ),
    )
    assert value(waiting, "sluice_agent_free_cpu_cores", agent=agent["id"]) == 2  # nothing reserved for it
    cancelled = cli("runs", "cancel", big, env=env)
    assert cancelled.returncode == 0, cancelled.stderr

    def settled(s: Samples) -> bool:
        created = value(s, "sluice_runs_created_total", pipeline="tick", trigger_kind="cron")
        return (
            value(s, "sluice_runs_finished_total", pipeline="meter", trigger_kind="nats", status="failed")
            == 1
            and value(s, "sluice_trigger_events_total", trigger="orders", outcome="duplicate") == 1
            and value(
                s, "sluice_runs_finished_total", pipeline="too-big", trigger_kind="manual", status="cancelled"
            )
            == 1
            and value(
                s, "sluice_runs_finished_total", pipeline="tick", trigger_kind="cron", status="succeeded"
            )
            == created
        )

    wait_metrics(daemon, settled)
    text, samples = scrape(daemon)
    return text, samples, agent["id"]


async def apply_and_publish(daemon: SluiceUp, env: dict[str, str]) -> None:
    """The stream (the trigger binds its consumer on it when applied), the documents, then: a message
    whose run succeeds, one whose run fails, one whose params do not validate, and the first again
    past the stream's 1 s duplicate window (stored twice by JetStream; a duplicate for Sluice by its
    Nats-Msg-Id)."""
    nc = await nats.connect(daemon.nats_url, user_credentials=str(daemon.creds("admin", "ops")))
    try:
        js = nc.jetstream(timeout=5.0)
        await js.add_stream(
            StreamConfig(
                name="METER", subjects=["e2e.meter.>"], storage=StorageType.FILE, duplicate_window=1.0
            )
        )
        await asyncio.to_thread(apply, DOCUMENTS, env)
        subject = "e2e.meter.orders"
        for code, msg_id in ((0, "order-1"), (3, "order-2"), ("many", "order-3")):
            await js.publish(subject, json.dumps({"code": code}).encode(), headers={"Nats-Msg-Id": msg_id})
        await asyncio.sleep(1.5)
        ack = await js.publish(subject, json.dumps({"code": 0}).encode(), headers={"Nats-Msg-Id": "order-1"})
        assert not ack.duplicate  # past the stream's window: only Sluice can tell it is a repeat
    finally:
        await nc.close()


def test_metrics_follow_runs_events_steps_and_agents(sluice_daemon, sluice_agent) -> None:
    text, samples, agent = run_scenario(sluice_daemon, sluice_agent)

    def of(name: str, **labels: str) -> float:
        return value(samples, name, **labels)

    runs = "sluice_runs_created_total"
    finished = "sluice_runs_finished_total"
    assert (
        of(runs, pipeline="meter", trigger_kind="nats") == 2
    )  # the rejected event and the duplicate make none
    assert of(runs, pipeline="meter", trigger_kind="manual") == 1
    assert of(runs, pipeline="too-big", trigger_kind="manual") == 1
    assert of(finished, pipeline="meter", trigger_kind="nats", status="succeeded") == 1
    assert of(finished, pipeline="meter", trigger_kind="nats", status="failed") == 1
    assert of(finished, pipeline="meter", trigger_kind="manual", status="succeeded") == 1
    assert of(finished, pipeline="too-big", trigger_kind="manual", status="cancelled") == 1
    ticks = of(runs, pipeline="tick", trigger_kind="cron")
    assert ticks >= 2
    assert of(finished, pipeline="tick", trigger_kind="cron", status="succeeded") == ticks

    events = "sluice_trigger_events_total"
    assert of(events, trigger="orders", outcome="run") == 2
    assert of(events, trigger="orders", outcome="rejected") == 1
    assert of(events, trigger="orders", outcome="duplicate") == 1
    assert of(events, trigger="every-second", outcome="run") == ticks
    # Every cron fire taken, each soon after its scheduled second (1 s is the fire's own granularity).
    assert of("sluice_cron_fire_delay_seconds_count") == ticks
    assert 0 <= of("sluice_cron_fire_delay_seconds_sum") / ticks < 1.0
    assert of("sluice_trigger_jetstream_pending_messages", trigger="orders") == 0  # all delivered

    duration = "sluice_step_duration_seconds"
    assert of(f"{duration}_count", pipeline="meter", step="work") == 3
    assert of(f"{duration}_sum", pipeline="meter", step="work") >= 3 * 0.2  # each slept 0.2 s
    assert of(f"{duration}_count", pipeline="tick", step="only") == ticks
    assert of(f"{duration}_count", pipeline="too-big", step="huge") == 0  # it never ran
    # Every attempt accepted (the too-big step never was), none of them slow on an idle machine.
    latency = "sluice_step_dispatch_latency_seconds"
    assert of(f"{latency}_count") == 3 + ticks
    assert of(f"{latency}_bucket", le="1.0") == 3 + ticks

    assert of("sluice_steps_waiting") == 0  # the waiting step's run was cancelled
    assert of("sluice_steps_waiting_oldest_age_seconds") == 0
    assert of("sluice_agents", state="ready") == 1
    assert of("sluice_agents", state="lost") == 0
    assert of("sluice_agent_cpu_cores", agent=agent) == 2
    assert of("sluice_agent_free_cpu_cores", agent=agent) == 2  # everything it ran has ended
    assert of("sluice_agent_memory_bytes", agent=agent) == GIB
    assert of("sluice_agent_free_memory_bytes", agent=agent) == GIB
    assert of("sluice_agent_gpus", agent=agent) == 0
    assert of("sluice_leader") == 1
    assert "# HELP sluice_step_duration_seconds " in text


def test_every_series_the_dashboard_queries_is_exported(sluice_daemon, sluice_agent) -> None:
    _, samples, _ = run_scenario(sluice_daemon, sluice_agent)
    exported = {name for name, _ in samples}
    queried = {name for query in dashboard_queries(load_dashboard(DASHBOARD)) for name in metric_names(query)}
    assert len(queried) >= 15
    assert sorted(queried - exported) == []
