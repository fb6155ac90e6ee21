"""Pieces that statements are written from: column lists qualified by a table alias, and constant
values (statuses) written into a statement's text, where a partial index's predicate can match them."""

from __future__ import annotations

from collections.abc import Iterable


def qualified(columns: str, alias: str) -> str:
    """``"id, name"`` as ``"s.id, s.name"`` for alias ``s``."""
    return ", ".join(f"{alias}.{column.strip()}" for column in columns.split(","))


def values_list(values: Iterable[str]) -> str:
    """Constant strings as an SQL list, ``('queued', 'running')``: only for the project's own
    constants (a value is not escaped)."""
    return "(" + ", ".join(f"'{value}'" for value in values) + ")"
