"""The aiohttp application: routes, the error envelope, bearer-token auth and request metrics."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import asyncpg
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS

from daemon.api import agents, apply, credentials, events, ops, pipelines, runs, triggers
from daemon.api.context import API_TOKEN, NATS_ACCESS, NATS_CLIENT, POOL, SCHEDULER, SOURCES, NatsAccess
from daemon.api.http import OPEN_STREAMS, end_streams, json_response
from daemon.bus import SourceStore
from daemon.errors import SluiceError, Unauthorized
from daemon.metrics import HTTP_REQUESTS, HTTP_SECONDS
from daemon.scheduler import Scheduler

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MAX_BODY = 512 * 1024 * 1024  # source snapshots travel in request bodies
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
}


def make_app(
    *,
    pool: asyncpg.Pool,
    nc: NATS,
    sources: SourceStore,
    api_token: str | None,
    scheduler: Scheduler | None = None,
    nats: NatsAccess | None = None,
) -> web.Application:
    """The API; without ``scheduler`` (catalog-only use) run operations answer 503; ``nats`` says how
    to reach NATS as the system account (revocations) and whether it is closed to strangers."""
    app = web.Application(middlewares=[_metrics, _errors, _auth], client_max_size=MAX_BODY)
    app[POOL] = pool
    app[NATS_CLIENT] = nc
    app[SOURCES] = sources
    app[API_TOKEN] = api_token or ""
    app[OPEN_STREAMS] = set()
    app.on_shutdown.append(end_streams)
    if scheduler is not None:
        app[SCHEDULER] = scheduler
    if nats is not None:
        app[NATS_ACCESS] = nats
    for module in (ops, apply, pipelines, triggers, runs, agents, events, credentials):
        app.router.add_routes(module.routes)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as the contract's envelope; only a bug is a 500, and it is logged."""
    try:
        return await handler(request)
    except SluiceError as exc:
        return json_response(exc.to_json(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, HTTPStatus(exc.status).phrase.lower().replace(" ", "_"))
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return json_response({"error": {"code": code, "message": message, "details": []}}, status=exc.status)
    except Exception:
        log.exception("api_request_failed", method=request.method, path=request.path)
        return json_response(
            {
                "error": {
                    "code": "internal",
                    "message": "internal error; the daemon log has details",
                    "details": [],
                }
            },
            status=500,
        )


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[API_TOKEN]
    if token and request.path not in OPEN_PATHS:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("this API needs Authorization: Bearer <SLUICE_API_TOKEN>")
    return await handler(request)


@web.middleware
async def _metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    HTTP_SECONDS.labels(route).observe(time.perf_counter() - started)
    HTTP_REQUESTS.labels(route, request.method, str(response.status)).inc()
    return response
