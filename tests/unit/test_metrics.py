"""The pure parts of the metrics: the scrape-time view of the scheduler's memory, the cron fire delay,
a ready step's wait, and the PromQL scanner the dashboard test relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.dispatch.batch_plan import ReadyStep
from daemon.dispatch.registry import AgentState, Reservation
from daemon.intake.events import cron_fire_delay
from daemon.metrics.scrape import SchedulerCollector, agents_by_state, waiting
from runners.protocol import Capacity, Gpu
from tests.promql import dashboard_queries, load_dashboard, metric_names

GIB = 1 << 30


def test_waiting_counts_steps_and_ages_the_oldest() -> None:
    assert waiting([], 100.0) == (0, 0.0)
    assert waiting([97.5, 99.0, 95.0], 100.0) == (3, 5.0)
    assert waiting((t for t in [101.0]), 100.0) == (1, 0.0)  # a retry due later has not waited yet


def test_ready_since_is_the_later_of_known_and_due() -> None:
    step = ReadyStep(1, uuid4(), "score[3]", due=50.0, known=40.0)
    assert step.ready_since == 50.0
    step = ReadyStep(1, uuid4(), "score", known=40.0)
    assert step.ready_since == 40.0


def agent(name: str, status: str = "ready", *, draining: bool = False, gpus: int = 0) -> AgentState:
    capacity = Capacity(
        cpu=4.0, memory=8 * GIB, gpus=[Gpu(index=i, name="test gpu", memory=GIB) for i in range(gpus)]
    )
    return AgentState(id=name, name=name, capacity=capacity, status=status, draining=draining, seen=True)


def test_agents_by_state_lists_every_state() -> None:
    agents = [agent("a"), agent("b", draining=True), agent("c", "lost"), agent("d", "lost")]
    assert agents_by_state(agents) == {"ready": 1, "draining": 1, "lost": 2, "stopped": 0}
    assert agents_by_state([]) == {"ready": 0, "draining": 0, "lost": 0, "stopped": 0}


class Memory:
    """A scheduler's memory as the collector reads it."""

    def __init__(self, since: list[float], agents: list[AgentState], pending: dict[str, int]) -> None:
        self.since, self.agents, self.pending = since, agents, pending

    def waiting_since(self):
        return self.since

    def agent_states(self):
        return self.agents

    def jetstream_pending(self):
        return self.pending


def scrape(collector: SchedulerCollector) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_collector_exports_the_watched_schedulers_memory() -> None:
    busy = agent("gpu-box", gpus=2)
    busy_reservation = Reservation(attempt_id=7, cpu=1.5, memory=2 * GIB, gpus=(1,), since=0.0)
    busy.hold(busy_reservation)
    memory = Memory([0.0], [busy, agent("gone", "lost")], {"orders": 12})
    collector = SchedulerCollector()
    assert scrape(collector) == {}  # no scheduler: declared series, no samples
    stop = collector.watch(memory)
    samples = scrape(collector)
    on = (("agent", "gpu-box"),)
    assert samples[("sluice_agent_cpu_cores", on)] == 4.0
    assert samples[("sluice_agent_free_cpu_cores", on)] == 2.5
    assert samples[("sluice_agent_memory_bytes", on)] == 8 * GIB
    assert samples[("sluice_agent_free_memory_bytes", on)] == 6 * GIB
    assert samples[("sluice_agent_gpus", on)] == 2
    assert samples[("sluice_agent_free_gpus", on)] == 1
    assert ("sluice_agent_cpu_cores", (("agent", "gone"),)) not in samples  # a lost agent offers nothing
    assert samples[("sluice_agents", (("state", "lost"),))] == 1
    assert samples[("sluice_agents", (("state", "ready"),))] == 1
    assert samples[("sluice_steps_waiting", ())] == 1
    assert samples[("sluice_steps_waiting_oldest_age_seconds", ())] > 0
    assert samples[("sluice_trigger_jetstream_pending_messages", (("trigger", "orders"),))] == 12
    busy.unhold(7)
    assert scrape(collector)[("sluice_agent_free_cpu_cores", on)] == 4.0
    stop()
    assert scrape(collector) == {}


def test_cron_fire_delay_counts_from_the_scheduled_instant_in_its_own_zone() -> None:
    scheduled = datetime(2026, 3, 29, 2, 30, tzinfo=UTC)
    paris = scheduled.astimezone(datetime.fromisoformat("2026-03-29T04:30:00+02:00").tzinfo)
    received = scheduled + timedelta(seconds=1.25)
    assert cron_fire_delay({"scheduled_time": paris.isoformat()}, received) == 1.25
    assert cron_fire_delay({"scheduled_time": scheduled.isoformat()}, received) == 1.25
    assert cron_fire_delay({}, received) is None
    assert cron_fire_delay({"scheduled_time": "soon"}, received) is None
    assert cron_fire_delay({"scheduled_time": "2026-03-29T02:30:00"}, received) is None  # no zone


def test_metric_names_of_promql() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, pipeline) (rate(x_seconds_bucket{pipeline=~"a|b"}[5m])))'
    ) == {"x_seconds_bucket"}
    assert metric_names("sum(rate(a_sum[$__rate_interval])) / sum(rate(a_count[${window}]))") == {
        "a_sum",
        "a_count",
    }
    assert metric_names('up{job="by"} and on(instance) sluice_leader == 1 offset 5m') == {
        "up",
        "sluice_leader",
    }
    assert metric_names("max without (agent) (free_gpus) > bool 1") == {"free_gpus"}
    assert metric_names("label_values(sluice_runs_created_total, pipeline)") == {"sluice_runs_created_total"}
    assert metric_names('count({__name__=~"sluice_.*"}) + Inf') == set()


def test_dashboard_queries_cover_panels_rows_and_variables() -> None:
    dashboard = {
        "panels": [
            {"targets": [{"expr": "a"}]},
            {"type": "row", "panels": [{"targets": [{"expr": "b"}, {"refId": "no expression"}]}]},
        ],
        "templating": {
            "list": [{"type": "query", "query": {"query": "label_values(c, x)"}}, {"type": "datasource"}]
        },
    }
    assert list(dashboard_queries(dashboard)) == ["a", "b", "label_values(c, x)"]


def test_the_dashboard_queries_only_sluice_series_and_names_its_datasource_by_variable() -> None:
    dashboard = load_dashboard(Path(__file__).parents[2] / "deploy" / "grafana" / "sluice.json")
    names = set().union(*(metric_names(query) for query in dashboard_queries(dashboard)))
    assert names
    assert all(name.startswith("sluice_") for name in names), names
    assert {"type": "datasource", "query": "prometheus"}.items() <= dashboard["templating"]["list"][0].items()
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
