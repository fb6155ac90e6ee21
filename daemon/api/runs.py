"""Runs: start one (the REST trigger), list, show, cancel, and read or follow a step's log."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from aiohttp import web

from daemon.api.context import POOL, SCHEDULER
from daemon.api.contract import BOOLEAN, IDEMPOTENCY_KEY, NAME, PAGED, VERSION, endpoint
from daemon.api.http import decode_cursor, int_query, json_response, limit_arg, open_stream, page, read_body
from daemon.api.log_files import LogFiles, default_logs
from daemon.errors import BadRequest, NotFound, Unavailable
from daemon.limits import Positive32
from daemon.planning.store_fingerprints import StoreFingerprints
from daemon.rules.rendering import log_path
from daemon.rules.states import FINAL_STEP
from daemon.runtime.scheduler import Scheduler
from daemon.store import lineage as lineage_store
from daemon.store import runs as run_store
from daemon.store import steps as step_store

routes = web.RouteTableDef()

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
MAX_IDEMPOTENCY_KEY = 255
STATUS_POLL_S = 1.0
LOG_CHUNK = 1 << 20
_encoder = msgspec.json.Encoder()


class RunBody(msgspec.Struct, forbid_unknown_fields=True):
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    version: Positive32 | None = None
    reuse: bool = True


def _scheduler(request: web.Request) -> Scheduler:
    scheduler = request.app.get(SCHEDULER)
    if scheduler is None:
        raise Unavailable("this daemon does not run the scheduler")
    return scheduler


MIN_RUN_ID_PREFIX = 8
_HEX = frozenset("0123456789abcdef")


async def run_id_arg(request: web.Request) -> UUID:
    """The run the path names: a whole id, or (like git) a unique prefix of at least
    ``MIN_RUN_ID_PREFIX`` hex digits, as `sluice runs` shows them."""
    raw = request.match_info["id"]
    try:
        return UUID(raw)
    except ValueError:
        pass
    digits = raw.lower().replace("-", "")
    if len(digits) < MIN_RUN_ID_PREFIX or len(digits) > 32 or not set(digits) <= _HEX:
        raise NotFound(f"run {raw} does not exist (give a run id, or at least its first 8 characters)")
    matches = await run_store.run_ids_between(
        request.app[POOL], UUID(digits.ljust(32, "0")), UUID(digits.ljust(32, "f")), limit=2
    )
    if not matches:
        raise NotFound(f"no run id starts with {raw}")
    if len(matches) > 1:
        raise BadRequest(f"{raw} is the start of several run ids; give more of it")
    return matches[0]


async def _body(request: web.Request) -> RunBody:
    if not (await request.read()).strip():
        return RunBody()  # every field has a default: no body at all is a run with defaults
    return await read_body(request)


@routes.post("/api/v1/pipelines/{name}/runs")
@endpoint("run", body=RunBody, headers={"Idempotency-Key": IDEMPOTENCY_KEY})
async def start_run(request: web.Request) -> web.Response:
    """Start a run of a pipeline (201; 200 when an Idempotency-Key replays an earlier request)."""
    body = await _body(request)
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise BadRequest(f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY} characters")
    created = await _scheduler(request).create_run(
        request.match_info["name"],
        params=body.params,
        version=body.version,
        reuse=body.reuse,
        idempotency_key=key,
    )
    run = created.run
    return json_response({"run_id": str(run.id), **run.to_json()}, status=201 if created.created else 200)


@routes.get("/api/v1/runs")
@endpoint(
    "read",
    query={
        "pipeline": NAME,
        "status": {"type": "string", "enum": list(RUN_STATUSES)},
        "trigger": NAME,
        **PAGED,
    },
)
async def list_runs(request: web.Request) -> web.Response:
    """List runs, newest first (?pipeline=, ?status=, ?trigger=, ?limit=, ?cursor=)."""
    limit = limit_arg(request)
    status = request.query.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
    cursor = decode_cursor(request, tuple[datetime, UUID])
    records = await run_store.list_runs(
        request.app[POOL],
        limit=limit + 1,
        pipeline=request.query.get("pipeline") or None,
        status=status,
        trigger=request.query.get("trigger") or None,
        before=cursor,
    )
    return json_response(
        page(records, limit, key=lambda record: (record.created_at.isoformat(), str(record.id)))
    )


@routes.get("/api/v1/runs/{id}")
async def get_run(request: web.Request) -> web.Response:
    """One run with its steps, their inputs (with the fingerprints they saw), attempts, outputs,
    metrics and why a ready step waits."""
    run_id = await run_id_arg(request)
    async with request.app[POOL].acquire() as conn:
        run = await run_store.get_run(conn, run_id)
        if run is None:
            raise NotFound(f"run {run_id} does not exist")
        steps = await step_store.get_steps(conn, run_id)
        inputs = await lineage_store.run_inputs(conn, run_id)
    waiting = {}
    if (scheduler := request.app.get(SCHEDULER)) is not None:
        waiting = scheduler.waiting_reasons()
    items = []
    for step in steps:
        item = step.to_json() | {"inputs": [record.to_json() for record in inputs.get(step.id, [])]}
        if step.status == "ready" and waiting.get(step.id):
            item["waiting_reason"] = waiting[step.id]
        items.append(item)
    return json_response(run.to_json() | {"steps": items})


@routes.post("/api/v1/runs/{id}/cancel")
@endpoint("run")
async def cancel_run(request: web.Request) -> web.Response:
    """Cancel a queued or running run; its running steps are stopped."""
    run = await _scheduler(request).cancel_run(await run_id_arg(request))
    return json_response(run.to_json())


@routes.get("/api/v1/runs/{id}/steps/{step}/logs")
@endpoint("read", query={"attempt": VERSION, "follow": BOOLEAN})
async def step_logs(request: web.Request) -> web.StreamResponse:
    """A step's log: the latest attempt's (or ?attempt=n), as text; ?follow=true streams it as
    server-sent events (`event: line`, then `event: end` once the step finished)."""
    run_id, name = await run_id_arg(request), request.match_info["step"]
    wanted = int_query(request, "attempt")
    pool = request.app[POOL]
    step = await step_store.get_step(pool, run_id, name)
    if step is None:
        if await run_store.get_run(pool, run_id) is None:
            raise NotFound(f"run {run_id} does not exist")
        raise NotFound(f"run {run_id} has no step {name}")
    if wanted is not None and not any(attempt.number == wanted for attempt in step.attempts):
        raise NotFound(f"step {name} of run {run_id} has no attempt {wanted}")
    scheduler = request.app.get(SCHEDULER)
    logs = await default_logs(pool, scheduler.objects if scheduler is not None else StoreFingerprints())
    if request.query.get("follow", "").lower() in ("1", "true", "yes"):
        with open_stream(request):
            return await _follow(request, run_id, name, wanted, logs)
    if not step.attempts:
        if step.status == "reused" and step.explanation and (origin := step.explanation.get("reused_from")):
            raise NotFound(
                f"step {name} of run {run_id} was reused, not run: its log is that of step "
                f"{origin['step']} of run {origin['run_id']}"
            )
        raise NotFound(f"step {name} of run {run_id} has not started yet: no log")
    number = wanted or step.attempts[-1].number
    text = (await logs.read(log_path(str(run_id), name, number))).decode("utf-8", "replace")
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def _follow(
    request: web.Request, run_id: UUID, name: str, wanted: int | None, logs: LogFiles
) -> web.StreamResponse:
    """Tails the attempt's log file; with no attempt asked for, moves on to each newer attempt."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    pool = request.app[POOL]
    number, offset, partial = wanted, 0, b""
    step = await step_store.get_step(pool, run_id, name)
    checked = asyncio.get_running_loop().time()
    while True:
        latest = step.attempts[-1].number if step and step.attempts else None
        if number is None:
            number = latest
        if number is not None:
            path = log_path(str(run_id), name, number)
            while chunk := await logs.read(path, offset, LOG_CHUNK):
                offset += len(chunk)
                *lines, partial = (partial + chunk).split(b"\n")
                for line in lines:
                    await _send(
                        response,
                        "line",
                        {"attempt": number, "stream": "stdout", "line": line.decode("utf-8", "replace")},
                    )
            if wanted is None and latest is not None and latest > number:
                await _flush(response, number, partial)
                number, offset, partial = latest, 0, b""
                continue
        done = step is not None and step.status in FINAL_STEP
        attempt_done = (
            wanted is not None
            and step is not None
            and any(a.number == wanted and a.finished_at is not None for a in step.attempts)
        )
        if done or attempt_done:
            await _flush(response, number, partial)
            await _send(response, "end", {"status": step.status if step else None})
            break
        await asyncio.sleep(logs.poll_s)
        now = asyncio.get_running_loop().time()
        if now - checked >= STATUS_POLL_S:
            checked = now
            step = await step_store.get_step(pool, run_id, name)
    await response.write_eof()
    return response


async def _flush(response: web.StreamResponse, number: int | None, partial: bytes) -> None:
    if partial and number is not None:
        await _send(
            response,
            "line",
            {"attempt": number, "stream": "stdout", "line": partial.decode("utf-8", "replace")},
        )


async def _send(response: web.StreamResponse, event: str, data: dict) -> None:
    await response.write(b"event: " + event.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n")
