"""Creating runs: one statement inserts a run, its step runs (in pipeline order) and the first
attempts of steps placed already; the pieces of that statement that a trigger's batch of events
writes its runs with (:mod:`daemon.store.triggering`); and admitting a held run, whose steps take
their plans only then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec

from daemon.rules.lineage import StepInput
from daemon.store.attempts import Placement, placement_arrays
from daemon.store.db import Db
from daemon.store.lineage import input_arrays, inputs_cte, replace_run_inputs
from daemon.store.runs import RUN_COLUMNS, RunRecord
from daemon.store.steps import NewStep


@dataclass(frozen=True, slots=True)
class StepPlan:
    """A step of a run about to be inserted: its first status and what reuse decided for it."""

    status: str
    fingerprint: str | None = None
    components: Mapping[str, str] | None = None
    reused_from: int | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    explanation: Mapping[str, Any] | None = None
    placement: Placement | None = None
    """Placed already (status ``dispatched``): the insert records its first attempt."""
    partition_of: str | None = None
    """A partition of this step (``foreach``): its run name is ``step[partition]``."""
    partition: int | None = None
    item: Any = None
    """What the partition's templates see as ``${item}`` (JSON)."""
    inputs: Sequence[StepInput] = ()
    """What the step run reads (lineage), recorded with it."""


async def insert_run(
    db: Db,
    *,
    pipeline: str,
    version: int,
    params: Mapping[str, Any],
    reuse: bool,
    steps: Mapping[str, StepPlan],
    held: bool = False,
    trigger: str | None = None,
    event_id: int | None = None,
    idempotency_key: str | None = None,
    resolution: str = "default",
    only_if_default: bool = False,
    run_id: UUID | None = None,
    finished: bool = False,
) -> tuple[RunRecord, list[NewStep]] | None:
    """Inserts a run (with id ``run_id``, else a new one) and its step runs (in ``steps``' order) in
    one statement: queued, or ``succeeded`` at once when ``finished`` (every step was reused).

    Returns None, inserting nothing, when ``idempotency_key`` is already taken for ``pipeline``, the
    version is disabled (or gone) by the time the statement runs, or (``only_if_default``) it is no
    longer the pipeline's default version: the caller may have picked it from a stale cache.
    """
    run_id = run_id or uuid4()
    row = await db.fetchrow(
        f"""
        WITH run AS (
            INSERT INTO runs (id, pipeline, version, params, reuse, trigger, event_id, idempotency_key,
                              resolution, held, status, started_at, finished_at)
            SELECT $11, $1, $2, $3, $4, $5, $6, $7, $8, $9,
                   {FIRST_STATUS.format(finished="$12", dispatching="$13")}
            WHERE EXISTS (
                SELECT 1 FROM versions WHERE pipeline = $1 AND version = $2 AND status <> 'disabled'
            ) AND (NOT $10 OR EXISTS (SELECT 1 FROM pipelines WHERE name = $1 AND default_version = $2))
            ON CONFLICT (pipeline, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING {RUN_COLUMNS}
        ), {steps_cte("run", 14)}
        SELECT run.*, {STEP_ARRAYS} FROM run
        """,
        pipeline,
        version,
        dict(params),
        reuse,
        trigger,
        event_id,
        idempotency_key,
        resolution,
        held,
        only_if_default,
        run_id,
        finished,
        dispatching(steps),
        *step_arrays([(run_id, steps)]),
    )
    if row is None:
        return None
    return RunRecord.from_row(row), new_steps(row)


FIRST_STATUS = (
    "CASE WHEN {finished} THEN 'succeeded' WHEN {dispatching} THEN 'running' ELSE 'queued' END, "
    "CASE WHEN {finished} OR {dispatching} THEN now() END, CASE WHEN {finished} THEN now() END"
)
"""status, started_at, finished_at of a new run: a run whose every step was reused is over at once;
one whose first steps were placed as it was created has started."""


def dispatching(steps: Mapping[str, StepPlan]) -> bool:
    """Whether a run starts as it is created: some of its steps were placed already."""
    return any(plan.placement is not None for plan in steps.values())


STEP_ARRAYS = ", ".join(
    f"(SELECT array_agg({column} ORDER BY s.id) FROM steps s {join} WHERE s.run_id = run.id) AS {name}"
    for column, join, name in (
        ("s.id", "", "step_ids"),
        ("s.name", "", "step_names"),
        ("s.status", "", "step_statuses"),
        ("a.id", "LEFT JOIN attempts a ON a.step_run_id = s.id", "step_attempts"),
    )
)
"""A run's new step runs, in ``steps`` order, as arrays (see :func:`new_steps`)."""

_STEP_ARRAY_TYPES = (
    *("uuid", "text", "text", "text", "text", "bigint", "text", "text", "text", "text", "text"),
    *("text", "int", "text"),
)


def steps_cte(runs: str, first: int) -> str:
    """The CTEs ``steps``, ``attempts`` and ``inputs`` of a statement that inserts runs: the step runs
    of the runs that the CTE ``runs`` inserted (others are left out), the first attempts of those
    placed already (:class:`Placement`) and their inputs (lineage), from the arrays of
    :func:`step_arrays`, bound from parameter ``$first`` on."""
    arrays = ", ".join(f"${first + index}::{kind}[]" for index, kind in enumerate(_STEP_ARRAY_TYPES))
    return f"""step_rows AS (
            SELECT * FROM unnest({arrays})
                 WITH ORDINALITY AS x(run_id, name, status, fingerprint, components, reused_from, outputs,
                                      explanation, agent_id, resources, gpus, partition_of, partition,
                                      item, position)
        ), steps AS (
            INSERT INTO step_runs (run_id, name, status, ready_at, finished_at, fingerprint, components,
                                   reused_from, outputs, explanation, partition_of, partition, item)
            SELECT x.run_id, x.name, x.status, CASE WHEN x.status IN ('ready', 'dispatched') THEN now() END,
                   CASE WHEN x.status = 'reused' THEN now() END, x.fingerprint, x.components::jsonb,
                   x.reused_from, coalesce(x.outputs::jsonb, '{{}}'), x.explanation::jsonb,
                   x.partition_of, x.partition, x.item::jsonb
            FROM step_rows x WHERE x.run_id IN (SELECT id FROM {runs})
            ORDER BY x.position
            RETURNING id, run_id, name, status
        ), attempts AS (
            INSERT INTO attempts (step_run_id, number, agent_id, resources, gpus)
            SELECT s.id, 1, x.agent_id, x.resources::jsonb, x.gpus::int[]
            FROM step_rows x JOIN steps s ON s.run_id = x.run_id AND s.name = x.name
            WHERE x.agent_id IS NOT NULL
            RETURNING id, step_run_id
        ), {inputs_cte("steps", first + len(_STEP_ARRAY_TYPES))}"""


def step_arrays(runs: Sequence[tuple[UUID, Mapping[str, StepPlan]]]) -> list[list[Any]]:
    """The step runs of new runs (run id, the run's steps by name), one array per column, for
    :func:`steps_cte`: run id, name, status, then what reuse decided (fingerprint, components,
    reused_from, outputs, explanation; JSON as text), then the placement (:func:`placement_arrays`),
    then the partition (its step, index and item as JSON text), then the inputs
    (:func:`input_arrays`)."""
    run_ids: list[UUID] = []
    names: list[str] = []
    plans: list[StepPlan] = []
    for run_id, steps in runs:
        run_ids.extend([run_id] * len(steps))
        names.extend(steps)
        plans.extend(steps.values())
    return [
        run_ids,
        names,
        [plan.status for plan in plans],
        *reuse_arrays(plans),
        *placement_arrays([plan.placement for plan in plans]),
        [plan.partition_of for plan in plans],
        [plan.partition for plan in plans],
        [None if plan.partition is None else msgspec.json.encode(plan.item).decode() for plan in plans],
        *input_arrays(
            (run_id, name, plan.inputs)
            for run_id, steps in runs
            for name, plan in steps.items()
            if plan.inputs
        ),
    ]


def reuse_arrays(plans: Sequence[StepPlan]) -> list[list[Any]]:
    """What reuse decided for each step, one array per column: fingerprint, components, reused_from,
    outputs, explanation (JSON as text)."""
    return [
        [plan.fingerprint for plan in plans],
        [_json_or_none(plan.components) for plan in plans],
        [plan.reused_from for plan in plans],
        [_json_or_none(plan.outputs) for plan in plans],
        [_json_or_none(plan.explanation) for plan in plans],
    ]


def new_steps(row: asyncpg.Record) -> list[NewStep]:
    """The step runs a run was inserted with (the columns of ``STEP_ARRAYS``)."""
    columns = ("step_ids", "step_names", "step_statuses", "step_attempts")
    return [NewStep(*item) for item in zip(*(row[column] or [] for column in columns), strict=True)]


def _json_or_none(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


async def admit_run(conn: asyncpg.Connection, run_id: UUID, steps: Mapping[str, StepPlan]) -> list[NewStep]:
    """Releases a held run: it takes a slot, and each of its steps takes its plan as made now
    (status, fingerprint, reuse, inputs); the partitions of its foreach steps, planned only now, are
    inserted. Returns the steps with their new status."""
    await conn.execute("UPDATE runs SET held = false WHERE id = $1", run_id)
    partitions = {name: plan for name, plan in steps.items() if plan.partition_of is not None}
    steps = {name: plan for name, plan in steps.items() if plan.partition_of is None}
    # Before the partitions, which are inserted with theirs.
    await replace_run_inputs(conn, run_id, [(name, plan.inputs) for name, plan in steps.items()])
    inserted = []
    if partitions:
        inserted = await conn.fetch(
            f"WITH run AS (SELECT $1::uuid AS id), {steps_cte('run', 2)} SELECT id, name, status FROM steps",
            run_id,
            *step_arrays([(run_id, partitions)]),
        )
    rows = await conn.fetch(
        """
        UPDATE step_runs s SET status = x.status, fingerprint = x.fingerprint,
               components = x.components::jsonb, reused_from = x.reused_from,
               outputs = coalesce(x.outputs::jsonb, '{}'), explanation = x.explanation::jsonb,
               ready_at = CASE WHEN x.status = 'ready' THEN now() END,
               finished_at = CASE WHEN x.status = 'reused' THEN now() END
        FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[])
             AS x(name, status, fingerprint, components, reused_from, outputs, explanation)
        WHERE s.run_id = $1 AND s.name = x.name AND s.status = 'pending'
        RETURNING s.id, s.name, s.status
        """,
        run_id,
        list(steps),
        [plan.status for plan in steps.values()],
        *reuse_arrays(list(steps.values())),
    )
    return [NewStep(row["id"], row["name"], row["status"]) for row in [*rows, *inserted]]
