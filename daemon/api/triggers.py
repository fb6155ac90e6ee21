"""Triggers (read, pause, resume, delete, and the events each saw) and datastores."""

from __future__ import annotations

from aiohttp import web

from daemon import store
from daemon.api.context import POOL, SCHEDULER
from daemon.api.contract import PAGED, endpoint
from daemon.api.http import decode_cursor, json_response, limit_arg, page
from daemon.errors import NotFound

routes = web.RouteTableDef()


def _with_status(request: web.Request, record: store.TriggerRecord) -> dict:
    """The contract's trigger shape plus ``status``: what its source says about it now (on a standby
    daemon: ``standby`` and which daemon leads, the one that runs the triggers)."""
    scheduler = request.app.get(SCHEDULER)
    return record.to_json() | {"status": {} if scheduler is None else scheduler.trigger_status(record.name)}


async def _sync(request: web.Request, name: str) -> None:
    """Tells the sources (the leader's) about a committed change of trigger ``name``."""
    if (scheduler := request.app.get(SCHEDULER)) is not None:
        await scheduler.trigger_changed(name)


@routes.get("/api/v1/triggers")
@endpoint("read", query=PAGED)
async def list_triggers(request: web.Request) -> web.Response:
    limit = limit_arg(request)
    async with request.app[POOL].acquire() as conn:
        records = await store.list_triggers(conn, limit=limit + 1, after=decode_cursor(request, str))
    body = page(records, limit, key=lambda record: record.name)
    body["items"] = [_with_status(request, record) for record in records[:limit]]
    return json_response(body)


@routes.get("/api/v1/triggers/{name}")
async def get_trigger(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    async with request.app[POOL].acquire() as conn:
        record = await store.get_trigger(conn, name)
    if record is None:
        raise NotFound(f"trigger {name} does not exist")
    return json_response(_with_status(request, record))


@routes.get("/api/v1/triggers/{name}/events")
@endpoint("read", query=PAGED)
async def list_trigger_events(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    limit = limit_arg(request)
    async with request.app[POOL].acquire() as conn:
        if await store.get_trigger(conn, name) is None:
            raise NotFound(f"trigger {name} does not exist")
        records = await store.list_events(conn, name, limit=limit + 1, before=decode_cursor(request, int))
    return json_response(page(records, limit, key=lambda record: record.id))


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        record = await store.set_trigger_paused(conn, request.match_info["name"], paused)
    await _sync(request, record.name)
    return json_response(_with_status(request, record))


@routes.post("/api/v1/triggers/{name}/pause")
@endpoint("run")
async def pause_trigger(request: web.Request) -> web.Response:
    return await _set_paused(request, True)


@routes.post("/api/v1/triggers/{name}/resume")
@endpoint("run")
async def resume_trigger(request: web.Request) -> web.Response:
    return await _set_paused(request, False)


@routes.delete("/api/v1/triggers/{name}")
@endpoint("publish")
async def delete_trigger(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    async with request.app[POOL].acquire() as conn:
        if not await store.delete_trigger(conn, name):
            raise NotFound(f"trigger {name} does not exist")
    await _sync(request, name)
    return json_response({"name": name, "deleted": True})


@routes.get("/api/v1/datastores")
async def list_datastores(request: web.Request) -> web.Response:
    limit = limit_arg(request)
    async with request.app[POOL].acquire() as conn:
        records = await store.list_datastores(conn, limit=limit + 1, after=decode_cursor(request, str))
    return json_response(page(records, limit, key=lambda record: record.name))
