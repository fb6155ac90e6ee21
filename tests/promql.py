"""The metric names a PromQL expression (or a Grafana ``label_values(…)`` query) reads: what a
dashboard needs a daemon to export. A small scanner, not a parser: it drops strings, label matchers,
ranges, grouping clauses and Grafana variables, then keeps the identifiers that are not functions,
operators or keywords."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
_LABEL_VALUES = re.compile(r"\blabel_values\s*\(\s*([A-Za-z_:][\w:]*)\s*(?:,[^()]*)?\)")
_IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (histogram series keep their ``_bucket``/``_sum``/``_count``)."""
    text = _STRINGS.sub(" ", expr)
    while (dropped := _MATCHERS.sub(" ", text)) != text:
        text = dropped
    text = _RANGES.sub(" ", text)
    text = _VARIABLES.sub(" ", text)
    text = _LABEL_VALUES.sub(lambda match: f" {match.group(1)} ", text)
    while (dropped := _GROUPING.sub(" ", text)) != text:
        text = dropped
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call or name in _KEYWORDS or name.lower() in ("inf", "nan"):
            continue
        names.add(name)
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[str]:
    """Every PromQL expression of a Grafana dashboard: its panels' targets (rows' panels too) and its
    query variables."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            yield query["query"] if isinstance(query, dict) else query


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
