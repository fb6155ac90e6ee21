"""Backfills: start one over a trigger's range, list them, follow one, cancel one."""

from __future__ import annotations

from aiohttp import web

from daemon.api.context import POOL, SCHEDULER
from daemon.api.contract import NAME, PAGED, Schema, endpoint
from daemon.api.http import decode_cursor, int_arg, json_response, limit_arg, page, read_body
from daemon.errors import BadRequest, Conflict, NotFound
from daemon.intake.backfill_requests import BackfillRequest, create_backfill
from daemon.limits import INT32_MAX
from daemon.store import backfills as backfill_store

routes = web.RouteTableDef()

BACKFILL_ID: Schema = {"type": "integer", "minimum": 1, "maximum": 2**53}
STATUS: Schema = {"type": "string", "enum": list(backfill_store.BACKFILL_STATUSES)}


def _wake(request: web.Request) -> None:
    """The worker runs on the leader; on this daemon, it looks at once (elsewhere within a second)."""
    scheduler = request.app.get(SCHEDULER)
    if scheduler is not None and scheduler.backfills is not None:
        scheduler.backfills.wake()


@routes.post("/api/v1/triggers/{name}/backfills")
@endpoint("run", body=BackfillRequest)
async def start_backfill(request: web.Request) -> web.Response:
    """Replay a cron or files trigger over [from, to) (201): one event per fire or file, deduplicated
    against the events the trigger already has."""
    body: BackfillRequest = await read_body(request)
    if body.version is not None and not 1 <= body.version <= INT32_MAX:
        raise BadRequest(f"version: must be between 1 and {INT32_MAX}, not {body.version}")
    if body.max_active is not None and not 1 <= body.max_active <= INT32_MAX:
        raise BadRequest(f"max_active: must be between 1 and {INT32_MAX}, not {body.max_active}")
    record = await create_backfill(request.app[POOL], request.match_info["name"], body)
    _wake(request)
    return json_response(record.to_json(), status=201)


@routes.get("/api/v1/backfills")
@endpoint("read", query={"trigger": NAME, "status": STATUS, **PAGED})
async def list_backfills(request: web.Request) -> web.Response:
    """Backfills, newest first (?trigger=, ?status=, ?limit=, ?cursor=), each with its counts."""
    limit = limit_arg(request)
    records = await backfill_store.list_backfills(
        request.app[POOL],
        limit=limit + 1,
        before=decode_cursor(request, int),
        trigger=request.query.get("trigger") or None,
        status=request.query.get("status") or None,
    )
    return json_response(page(records, limit, key=lambda record: record.id))


@routes.get("/api/v1/backfills/{id}")
@endpoint("read", path={"id": BACKFILL_ID})
async def get_backfill(request: web.Request) -> web.Response:
    backfill_id = int_arg(request, "id")
    record = await backfill_store.get_backfill(request.app[POOL], backfill_id)
    if record is None:
        raise NotFound(f"backfill {backfill_id} does not exist")
    return json_response(record.to_json())


@routes.post("/api/v1/backfills/{id}/cancel")
@endpoint("run", path={"id": BACKFILL_ID})
async def cancel_backfill(request: web.Request) -> web.Response:
    """Stop making events (within one batch); the runs already made go on."""
    backfill_id = int_arg(request, "id")
    pool = request.app[POOL]
    if await backfill_store.finish(pool, backfill_id, "cancelled", "cancelled by request") is None:
        record = await backfill_store.get_backfill(pool, backfill_id)
        if record is None:
            raise NotFound(f"backfill {backfill_id} does not exist")
        if record.status != "cancelled":
            raise Conflict(f"backfill {backfill_id} is {record.status} already")
    _wake(request)
    record = await backfill_store.get_backfill(pool, backfill_id)
    assert record is not None
    return json_response(record.to_json())
