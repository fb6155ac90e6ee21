"""The catalog pages: pipelines with their versions (spec, lifecycle, a form to start a run) and
triggers with their state and the events each saw."""

from __future__ import annotations

from typing import Any

import yaml
from aiohttp import web

from daemon import store
from daemon.api.context import POOL, SCHEDULER
from daemon.api.contract import VERSION, endpoint
from daemon.api.http import int_query
from daemon.errors import NotFound
from daemon.store import backfills as backfill_store
from daemon.ui.page import render

routes = web.RouteTableDef()

LISTED = 500
"""The most pipelines, versions, triggers or events one page lists."""
RECENT_EVENTS = 50
RECENT_BACKFILLS = 10


@routes.get("/pipelines")
@endpoint("read", page=True)
async def pipelines_page(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        pipelines = await store.list_pipelines(conn, limit=LISTED)
    return render(request, "pipelines.html", "pipelines", pipelines=pipelines)


@routes.get("/pipelines/{name}")
@endpoint("read", page=True, query={"version": VERSION})
async def pipeline_page(request: web.Request) -> web.Response:
    """A pipeline: its versions, one version's spec (the default unless ?version=), the lifecycle
    actions, and a form made from that version's params to start a run of it."""
    name = request.match_info["name"]
    async with request.app[POOL].acquire() as conn:
        pipeline = await store.get_pipeline(conn, name)
        if pipeline is None:
            raise NotFound(f"pipeline {name} does not exist")
        versions = await store.list_versions(conn, name, limit=LISTED)
        number = int_query(request, "version")
        shown = await store.get_version(conn, name, number)
        if shown is None and number is not None:
            raise NotFound(f"pipeline {name} has no version {number}")
        if shown is None and versions:
            shown = versions[0]
    return render(
        request,
        "pipeline.html",
        "pipelines",
        pipeline=pipeline,
        versions=versions,
        shown=shown,
        params=_params(shown.spec) if shown is not None else [],
        spec_yaml=_yaml(shown.spec) if shown is not None else "",
    )


def _yaml(spec: dict[str, Any]) -> str:
    """``spec`` as YAML for people, through libyaml where PyYAML has it: the pure-Python dumper takes
    some 200 ms for a 200-step pipeline."""
    return yaml.dump(
        spec, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False, allow_unicode=True
    )


def _params(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The version's params as form fields: name, type, default (as the field shows it), description;
    required ones first, then by name (the stored spec keeps no order of its own)."""
    fields = []
    for name, param in (spec.get("params") or {}).items():
        default = param.get("default")
        shown = ", ".join(map(str, default)) if isinstance(default, list) else default
        fields.append(
            {
                "name": name,
                "type": param.get("type", "string"),
                "default": "" if shown is None else shown,
                "required": default is None,
                "description": param.get("description", ""),
            }
        )
    return sorted(fields, key=lambda field: (not field["required"], field["name"]))


def _status(request: web.Request, name: str) -> dict[str, Any]:
    scheduler = request.app.get(SCHEDULER)
    return {} if scheduler is None else dict(scheduler.trigger_status(name))


@routes.get("/triggers")
@endpoint("read", page=True)
async def triggers_page(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        triggers = await store.list_triggers(conn, limit=LISTED)
    return render(
        request,
        "triggers.html",
        "triggers",
        triggers=[(trigger, _status(request, trigger.name)) for trigger in triggers],
    )


@routes.get("/triggers/{name}")
@endpoint("read", page=True)
async def trigger_page(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    async with request.app[POOL].acquire() as conn:
        trigger = await store.get_trigger(conn, name)
        if trigger is None:
            raise NotFound(f"trigger {name} does not exist")
        events = await store.list_events(conn, name, limit=RECENT_EVENTS)
        backfills = await backfill_store.list_backfills(conn, limit=RECENT_BACKFILLS, trigger=name)
    return render(
        request,
        "trigger.html",
        "triggers",
        trigger=trigger,
        status=_status(request, name),
        events=events,
        backfills=[backfill.to_json() for backfill in backfills],
        spec_yaml=_yaml(trigger.spec),
    )
