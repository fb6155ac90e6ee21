"""The run pages: the list (filtered, paged, live), a run (its DAG, steps, why it exists) and a step
(attempts, outputs, metrics, the reuse decision, its live log)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import msgspec
from aiohttp import web

from daemon import store
from daemon.api.context import POOL, SCHEDULER
from daemon.api.contract import BOOLEAN, CURSOR, NAME, VERSION, endpoint
from daemon.api.http import decode_cursor, encode_cursor
from daemon.api.runs import RUN_STATUSES, run_id_arg
from daemon.documents import PipelineSpec, spec_from_json
from daemon.documents.graph import dependencies
from daemon.errors import NotFound
from daemon.store import events as event_store
from daemon.store import lineage as lineage_store
from daemon.store import runs as run_store
from daemon.store import steps as step_store
from daemon.store.steps import StepRunRecord
from daemon.ui.dag import Box, Edge, layout, svg
from daemon.ui.page import render

routes = web.RouteTableDef()

PAGE_SIZE = 50
CHOICES = 500
"""At most this many pipelines and triggers are offered in the list's filters."""
STATUS: dict[str, Any] = {"type": "string", "enum": list(RUN_STATUSES)}
PART: dict[str, Any] = {"type": "string", "enum": ["live"], "description": "only the part that updates live"}


@routes.get("/")
@endpoint(
    "read",
    page=True,
    query={"pipeline": NAME, "status": STATUS, "trigger": NAME, "cursor": CURSOR, "part": PART},
)
async def run_list(request: web.Request) -> web.Response:
    """Runs, newest first, filtered by pipeline, status and trigger; the first page updates live."""
    pool = request.app[POOL]
    filters = {name: request.query.get(name) or None for name in ("pipeline", "status", "trigger")}
    cursor = decode_cursor(request, tuple[datetime, UUID])
    records = await run_store.list_runs(pool, limit=PAGE_SIZE + 1, before=cursor, **filters)
    shown = records[:PAGE_SIZE]
    counts = await step_store.status_counts(pool, [record.id for record in shown])
    chosen = {name: value for name, value in filters.items() if value}
    values = {
        "runs": [(record, _progress(counts.get(record.id, {}))) for record in shown],
        "filters": filters,
        "live_url": "/?" + urlencode(chosen | {"part": "live"}),
        "live": cursor is None,
        "next_cursor": (
            encode_cursor((shown[-1].created_at.isoformat(), str(shown[-1].id)))
            if len(records) > PAGE_SIZE
            else None
        ),
    }
    if request.query.get("part") == "live":
        return render(request, "run_rows.html", "runs", **values)
    async with pool.acquire() as conn:
        pipelines = await store.list_pipelines(conn, limit=CHOICES)
        triggers = await store.list_triggers(conn, limit=CHOICES)
    return render(
        request,
        "runs.html",
        "runs",
        pipelines=[p.name for p in pipelines],
        triggers=[t.name for t in triggers],
        statuses=RUN_STATUSES,
        **values,
    )


def _progress(counts: dict[str, int]) -> str:
    """``3/5 done`` for a run's list row: steps finished (succeeded or reused) of all."""
    total = sum(counts.values())
    done = counts.get("succeeded", 0) + counts.get("reused", 0)
    return f"{done}/{total}" if total else ""


@dataclass(frozen=True, slots=True)
class StepView:
    """A step of the run as its page shows it: the step run, and for a fan-out its partitions."""

    step: StepRunRecord
    partitions: list[StepRunRecord]
    waiting: str | None

    @property
    def summary(self) -> str:
        """``7/10 succeeded, 1 failed`` for a fan-out; empty otherwise."""
        if not self.partitions:
            return ""
        counts = Counter(p.status for p in self.partitions)
        total = len(self.partitions)
        return ", ".join(
            f"{n}/{total} {status}" if i == 0 else f"{n} {status}"
            for i, (status, n) in enumerate(counts.most_common())
        )


@routes.get("/runs/{id}")
@endpoint("read", page=True, query={"part": PART})
async def run_page(request: web.Request) -> web.Response:
    run_id = await run_id_arg(request)
    pool = request.app[POOL]
    async with pool.acquire() as conn:
        run, steps = await _run_with_steps(conn, run_id)
        version = await store.get_version(conn, run.pipeline, run.version)
        event = await event_store.get_event(conn, run.event_id) if run.event_id is not None else None
    views = _step_views(request, steps)
    spec = _spec(version.spec) if version is not None else None
    dag = _dag(spec, views, run_id) if spec is not None else None
    values = {"run": run, "steps": views, "dag": dag}
    if request.query.get("part") == "live":
        return render(request, "run_live.html", "runs", **values)
    return render(request, "run.html", "runs", event=event, version=version, **values)


async def _run_with_steps(conn: Any, run_id: UUID) -> tuple[run_store.RunRecord, list[StepRunRecord]]:
    run = await run_store.get_run(conn, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    return run, await step_store.get_steps(conn, run_id)


def _step_views(request: web.Request, steps: list[StepRunRecord]) -> list[StepView]:
    waiting: dict[int, str | None] = {}
    if (scheduler := request.app.get(SCHEDULER)) is not None:
        waiting = scheduler.waiting_reasons()
    partitions: dict[str, list[StepRunRecord]] = {}
    for step in steps:
        if step.partition_of is not None:
            partitions.setdefault(step.partition_of, []).append(step)
    return [
        StepView(
            step,
            partitions.get(step.name, []),
            (waiting.get(step.id) or step.waiting_reason) if step.status == "ready" else None,
        )
        for step in steps
        if step.partition_of is None
    ]


def _spec(raw: dict[str, Any]) -> PipelineSpec | None:
    """The version's spec, or None (the page goes without its DAG) for one stored by a Sluice whose
    documents this one no longer reads."""
    try:
        spec = spec_from_json("Pipeline", raw)
    except msgspec.ValidationError:
        return None
    return spec if isinstance(spec, PipelineSpec) else None


def _dag(spec: PipelineSpec, views: list[StepView], run_id: UUID) -> Any:
    names = [step.name for step in spec.steps]
    after = {step.name: set(step.after) for step in spec.steps}
    edges = [
        Edge(upstream, name, "after" if upstream in after[name] else "data")
        for name, upstreams in dependencies(spec.steps).items()
        for upstream in upstreams
    ]
    boxes = {
        view.step.name: Box(view.step.status, view.step.name, view.summary or _detail(view)) for view in views
    }
    return svg(layout(names, edges), boxes, href=lambda name: f"/runs/{run_id}/steps/{name}")


def _detail(view: StepView) -> str:
    step = view.step
    if step.status == "ready" and view.waiting:
        return "waiting for capacity"
    if step.attempts and step.attempts[-1].agent_id:
        return f"on {step.attempts[-1].agent_id}"
    return ""


@routes.get("/runs/{id}/steps/{step}")
@endpoint("read", page=True, query={"attempt": VERSION, "part": PART, "follow": BOOLEAN})
async def step_page(request: web.Request) -> web.Response:
    run_id, name = await run_id_arg(request), request.match_info["step"]
    pool = request.app[POOL]
    async with pool.acquire() as conn:
        run, steps = await _run_with_steps(conn, run_id)
        inputs = await lineage_store.run_inputs(conn, run_id)
    view = next((v for v in _step_views(request, steps) if v.step.name == name), None)
    if view is None:
        partition = next((s for s in steps if s.name == name), None)
        if partition is None:
            raise NotFound(f"run {run_id} has no step {name}")
        view = StepView(partition, [], None)
    template = "step_live.html" if request.query.get("part") == "live" else "step.html"
    step = view.step
    return render(request, template, "runs", run=run, view=view, step=step, inputs=inputs.get(step.id, []))
