"""Lineage: the inputs of step runs (table ``step_inputs``), written with the step runs, and the
questions asked of them: a run's inputs, who read under a path, which step run writes an output."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from daemon.rules.lineage import StepInput, ancestors, below
from daemon.store.db import Db

INPUT_ARRAY_TYPES = ("uuid", "text", "text", "text", "text", "text", "text", "uuid", "text", "text")
"""run id, step run name, input name, datastore, path, fingerprint, files (JSON), from run, step, output."""


def inputs_cte(steps: str, first: int) -> str:
    """The CTE ``inputs`` of a statement that inserts step runs (the CTE ``steps``, returning id,
    run_id and name): their inputs, from the arrays of :func:`input_arrays` bound from ``$first``."""
    arrays = ", ".join(f"${first + index}::{kind}[]" for index, kind in enumerate(INPUT_ARRAY_TYPES))
    return f"""inputs AS (
            INSERT INTO step_inputs (step_run_id, name, datastore, path, fingerprint, files, from_run,
                                     from_step, from_output)
            SELECT s.id, i.name, i.datastore, i.path, i.fingerprint, i.files::jsonb, i.from_run,
                   i.from_step, i.from_output
            FROM unnest({arrays}) AS i(run_id, step, name, datastore, path, fingerprint, files, from_run,
                                       from_step, from_output)
            JOIN {steps} s ON s.run_id = i.run_id AND s.name = i.step
        )"""


def input_arrays(steps: Iterable[tuple[UUID, str, Sequence[StepInput]]]) -> list[list[Any]]:
    """The inputs of step runs (run id, step run name, its inputs), one array per column of
    :data:`INPUT_ARRAY_TYPES`."""
    columns: list[list[Any]] = [[] for _ in INPUT_ARRAY_TYPES]
    for run_id, step, inputs in steps:
        for item in inputs:
            files = None if item.files is None else msgspec.json.encode(item.files).decode()
            row = (run_id, step, item.name, item.datastore, item.path, item.fingerprint, files)
            origin = (item.from_run, item.from_step, item.from_output)
            for column, value in zip(columns, (*row, *origin), strict=True):
                column.append(value)
    return columns


async def replace_run_inputs(
    conn: asyncpg.Connection, run_id: UUID, steps: Sequence[tuple[str, Sequence[StepInput]]]
) -> None:
    """Records the inputs of run ``run_id``'s step runs (by name) anew: a held run's, planned again
    as it is admitted. In the caller's transaction."""
    await conn.execute(
        "DELETE FROM step_inputs WHERE step_run_id IN (SELECT id FROM step_runs WHERE run_id = $1)", run_id
    )
    if any(inputs for _, inputs in steps):
        await conn.execute(
            f"WITH steps AS (SELECT id, run_id, name FROM step_runs WHERE run_id = $1), "
            f"{inputs_cte('steps', 2)} SELECT 1",
            run_id,
            *input_arrays((run_id, name, inputs) for name, inputs in steps),
        )


@dataclass(frozen=True, slots=True)
class InputRecord:
    """An input of a step run as stored."""

    step_run_id: int
    name: str
    datastore: str
    path: str
    fingerprint: str | None
    files: list[str] | None
    from_run: UUID | None
    from_step: str | None
    from_output: str | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> InputRecord:
        return cls(*(row[field] for field in cls.__slots__))  # type: ignore[attr-defined]

    def to_json(self) -> dict[str, Any]:
        """The shape of a step's ``inputs`` in the API (``files`` only for a partition over files)."""
        item: dict[str, Any] = {
            "name": self.name,
            "datastore": self.datastore,
            "path": self.path,
            "fingerprint": self.fingerprint,
        }
        if self.files is not None:
            item["files"] = self.files
        if self.from_run is not None:
            item["from"] = {"run_id": str(self.from_run), "step": self.from_step, "output": self.from_output}
        return item


_INPUT_COLUMNS = (
    "i.step_run_id, i.name, i.datastore, i.path, i.fingerprint, i.files, "
    "i.from_run, i.from_step, i.from_output"
)


async def run_inputs(db: Db, run_id: UUID) -> dict[int, list[InputRecord]]:
    """The inputs of run ``run_id``'s step runs, by step run id, each step's by name."""
    rows = await db.fetch(
        f"""
        SELECT {_INPUT_COLUMNS} FROM step_inputs i JOIN step_runs s ON s.id = i.step_run_id
        WHERE s.run_id = $1 ORDER BY i.step_run_id, i.name
        """,
        run_id,
    )
    found: dict[int, list[InputRecord]] = {}
    for row in rows:
        found.setdefault(row["step_run_id"], []).append(InputRecord.from_row(row))
    return found


@dataclass(frozen=True, slots=True)
class Reader:
    """A step run that read data at, under or around a path."""

    input: InputRecord
    run_id: UUID
    step: str
    status: str
    pipeline: str
    version: int
    created_at: datetime


_FULL_FILE = "CASE WHEN i.path = '' THEN f.file ELSE i.path || '/' || f.file END"

_AROUND = f"""(i.path = $2
           OR (i.path >= $3 AND i.path < $4)
           OR (i.path = ANY($5::text[]) AND (i.files IS NULL OR EXISTS (
               SELECT 1 FROM jsonb_array_elements_text(i.files) AS f(file)
               WHERE {_FULL_FILE} = $2 OR starts_with({_FULL_FILE}, $2 || '/')))))"""
"""At, below (at a path boundary) or around ``$2``: ``$3``, ``$4`` the bounds of :func:`below`,
``$5`` the :func:`ancestors` (a partition over files read only its own files there)."""


def _readers_sql(where: str, next_arg: int) -> str:
    after, name, limit = (f"${next_arg + n}" for n in range(3))
    return f"""
        SELECT {_INPUT_COLUMNS}, s.run_id, s.name AS step, s.status, r.pipeline, r.version, r.created_at
        FROM step_inputs i
        JOIN step_runs s ON s.id = i.step_run_id
        JOIN runs r ON r.id = s.run_id
        WHERE i.datastore = $1 AND {where}
          AND ({after}::bigint IS NULL
               OR (i.step_run_id, i.name COLLATE "C") < ({after}, {name}::text COLLATE "C"))
        ORDER BY i.step_run_id DESC, i.name COLLATE "C" DESC
        LIMIT {limit}
        """


_READERS_AROUND = _readers_sql(_AROUND, 6)
_READERS_ALL = _readers_sql("true", 2)
"""Every reader in a datastore: the question about its root."""


async def readers(
    db: Db, datastore: str, path: str, *, limit: int, before: tuple[int, str] | None = None
) -> list[Reader]:
    """The step runs that read ``path`` (cleaned) of ``datastore``, something under it, or a directory
    holding it (a partition only if one of its files lies there), newest step run first, then by
    input name; ``before``: after this (step run id, input name) in that order. Each part of the
    condition is an equality or a range on the index ``(datastore, path)``; the root (``""``)
    covers the whole datastore."""
    page = (None, None) if before is None else before
    bounds = below(path)
    if bounds is None:
        rows = await db.fetch(_READERS_ALL, datastore, *page, limit)
    else:
        rows = await db.fetch(_READERS_AROUND, datastore, path, *bounds, ancestors(path), *page, limit)
    return [
        Reader(
            InputRecord.from_row(row),
            row["run_id"],
            row["step"],
            row["status"],
            row["pipeline"],
            row["version"],
            row["created_at"],
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class Writer:
    """The step run that writes an output, and the one it reuses the outputs of, if it was reused."""

    step_run_id: int
    run_id: UUID
    step: str
    status: str
    pipeline: str
    version: int
    outputs: dict[str, str]
    reused_from: tuple[UUID, str, str] | None
    """(run id, step, status) of the step run whose outputs it links."""


async def writer(db: Db, run_id: UUID, step: str) -> Writer | None:
    """Step run ``step`` of run ``run_id`` (a partition ``score[3]`` too), or None."""
    row = await db.fetchrow(
        """
        SELECT s.id, s.run_id, s.name, s.status, s.outputs, r.pipeline, r.version,
               o.run_id AS origin_run, o.name AS origin_step, o.status AS origin_status
        FROM step_runs s JOIN runs r ON r.id = s.run_id
        LEFT JOIN step_runs o ON o.id = s.reused_from
        WHERE s.run_id = $1 AND s.name = $2
        """,
        run_id,
        step,
    )
    if row is None:
        return None
    origin = None
    if row["origin_run"] is not None:
        origin = (row["origin_run"], row["origin_step"], row["origin_status"])
    return Writer(
        row["id"],
        row["run_id"],
        row["name"],
        row["status"],
        row["pipeline"],
        row["version"],
        dict(row["outputs"] or {}),
        origin,
    )
