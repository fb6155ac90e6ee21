"""The metrics a step appended to its ``SLUICE_METRICS`` file: one JSON object per line,
``{"name": …, "value": …}`` plus any other keys (kept in ``extra``)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import structlog

from runners.protocol import Metric

log = structlog.get_logger(__name__)

MAX_METRICS = 10_000
MAX_BYTES = 512 * 1024
"""A StepFinished event travels as one NATS message; metrics beyond these bounds are dropped."""

_SCALAR = (int, float, str, bool, type(None))


def parse_metrics(text: str, *, attempt: int | None = None, limit: int = MAX_METRICS) -> list[Metric]:
    """The metrics in ``text``; a blank line is ignored, a bad one is skipped with a warning."""
    metrics: list[Metric] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(metrics) >= limit:
            log.warning("metrics_truncated", attempt=attempt, kept=limit)
            break
        problem = None
        try:
            record = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            record, problem = None, f"not JSON: {exc}"
        if problem is None:
            problem = _problem(record)
        if problem is not None:
            log.warning("metric_skipped", attempt=attempt, line=number, reason=problem)
            continue
        extra = {key: value for key, value in record.items() if key not in ("name", "value")}
        metrics.append(Metric(name=record["name"], value=record["value"], extra=extra))
    return metrics


def read_metrics(path: Path, *, attempt: int | None = None) -> list[Metric]:
    """The metrics in the file at ``path`` (none if it does not exist). Blocks: call from a thread."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("metrics_unreadable", attempt=attempt, path=str(path), error=str(exc))
        return []
    if len(data) > MAX_BYTES:
        log.warning("metrics_truncated", attempt=attempt, bytes=MAX_BYTES)
        data = data[: data.rfind(b"\n", 0, MAX_BYTES) + 1]
    return parse_metrics(data.decode("utf-8", "replace"), attempt=attempt)


def _problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("name"), str) or not record["name"]:
        return "no name"
    if "value" not in record:
        return "no value"
    if not isinstance(record["value"], _SCALAR):
        return "value is not a number, string, boolean or null"
    return None
