"""Prometheus metrics of the control plane (served at /metrics with the process collector's)."""

from prometheus_client import Counter, Gauge, Histogram

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
