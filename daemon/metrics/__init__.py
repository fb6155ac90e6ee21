"""Prometheus metrics of the control plane, served at ``/metrics`` with the process collector's.

Every series is defined here. Counters and histograms are updated where the thing they count is
committed (runs, events, attempts ended) or observed (an agent's accept); what lives in memory — the
dispatcher's ready steps, the agents' state and capacity, JetStream pending — is read at scrape time
by :class:`daemon.metrics.scrape.SchedulerCollector`, registered here.

Which daemon exports what (several daemons on one database): every daemon counts the runs it
created and the transitions it applied, and exports its own dispatcher's and registry's view; only
the leader runs the trigger sources, so ``sluice_trigger_events_total``, ``sluice_cron_fire_delay_seconds``
and ``sluice_trigger_jetstream_pending_messages`` come from the leader alone (a standby exports no
sample of them).
"""

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from daemon.metrics.scrape import SchedulerCollector

HTTP_REQUESTS = Counter(
    "sluice_http_requests_total",
    "HTTP API requests by route, method and status",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "sluice_http_request_duration_seconds",
    "HTTP API request latency by route",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
VERSIONS_PUBLISHED = Counter("sluice_versions_published_total", "Pipeline versions published")
LEADER = Gauge("sluice_leader", "1 while this daemon is the leader (runs the trigger sources), else 0")

RUNS_CREATED = Counter(
    "sluice_runs_created_total",
    "Runs created (held ones included), by pipeline and the kind of trigger that asked for them "
    "(cron, files, nats, run; manual for REST, the CLI and sluice.submit)",
    ["pipeline", "trigger_kind"],
)
RUNS_FINISHED = Counter(
    "sluice_runs_finished_total",
    "Runs that ended, by pipeline, trigger kind and final status (succeeded, failed, cancelled)",
    ["pipeline", "trigger_kind", "status"],
)
STEP_DURATION = Histogram(
    "sluice_step_duration_seconds",
    "Run time of step attempts on agents (started to finished, as the agent reports it), by pipeline "
    "and step; a foreach step's partitions count under the step's name",
    ["pipeline", "step"],
    buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400),
)
DISPATCH_LATENCY = Histogram(
    "sluice_step_dispatch_latency_seconds",
    "From a step becoming ready in the dispatcher to an agent accepting its attempt",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
TRIGGER_EVENTS = Counter(
    "sluice_trigger_events_total",
    "Trigger events committed, by trigger and outcome (run, duplicate, rejected, skipped)",
    ["trigger", "outcome"],
)
CRON_FIRE_DELAY = Histogram(
    "sluice_cron_fire_delay_seconds",
    "From a cron fire's scheduled time to the daemon taking its event (catch-up fires included)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)

SCHEDULER = SchedulerCollector()
"""The scheduler this process exports at scrape time (:meth:`SchedulerCollector.watch`)."""
REGISTRY.register(SCHEDULER)
