"""The aiohttp application: routes, the error envelope, access (``daemon.api.access``) and request
metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import asyncpg
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS

from daemon.api import (
    agents,
    apply,
    backfills,
    credentials,
    events,
    lineage,
    ops,
    pipelines,
    plans,
    runs,
    tokens,
    triggers,
)
from daemon.api.access import ACCESS, Access, AccessSettings, guard
from daemon.api.context import NATS_ACCESS, NATS_CLIENT, POOL, SCHEDULER, SOURCES, NatsAccess
from daemon.api.http import OPEN_STREAMS, end_streams, json_response
from daemon.errors import SluiceError
from daemon.metrics import HTTP_REQUESTS, HTTP_SECONDS
from daemon.runtime.bus import SourceStore
from daemon.runtime.scheduler import Scheduler
from daemon.ui import app as ui
from daemon.ui.page import error_page, is_page

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
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
    access: AccessSettings,
    scheduler: Scheduler | None = None,
    nats: NatsAccess | None = None,
) -> web.Application:
    """The API; without ``scheduler`` (catalog-only use) run operations answer 503; ``nats`` says how
    to reach NATS as the system account (revocations) and whether it is closed to strangers."""
    # Each route's own limit applies (access.guard); this one only bounds the largest.
    app = web.Application(middlewares=[_metrics, _errors, guard], client_max_size=access.max_upload)
    app[POOL] = pool
    app[NATS_CLIENT] = nc
    app[SOURCES] = sources
    app[ACCESS] = Access(access, pool)
    app[OPEN_STREAMS] = set()
    app.on_shutdown.append(end_streams)
    app.on_response_prepare.append(_protect)
    if scheduler is not None:
        app[SCHEDULER] = scheduler
    if nats is not None:
        app[NATS_ACCESS] = nats
    for module in (
        ops,
        apply,
        pipelines,
        triggers,
        backfills,
        runs,
        plans,
        lineage,
        agents,
        events,
        credentials,
        tokens,
    ):
        app.router.add_routes(module.routes)
    ui.install(app)
    return app


SECURITY_HEADERS = {
    # Pages load only this daemon's own script, styles and data, and no page may frame them (another
    # port of the same host is "same site" to a cookie, so SameSite alone does not stop framing).
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


async def _protect(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, streams and error pages included, carries :data:`SECURITY_HEADERS`."""
    response.headers.update(SECURITY_HEADERS)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as the contract's envelope (a page's as an HTML page saying the same);
    only a bug is a 500, and it is logged."""
    try:
        return await handler(request)
    except SluiceError as exc:
        body, status = exc.to_json(), exc.status
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, HTTPStatus(exc.status).phrase.lower().replace(" ", "_"))
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        body, status = {"error": {"code": code, "message": message, "details": []}}, exc.status
    except Exception:
        log.exception("api_request_failed", method=request.method, path=request.path)
        message = "internal error; the daemon log has details"
        body, status = {"error": {"code": "internal", "message": message, "details": []}}, 500
    if is_page(request):
        return error_page(request, status, body["error"]["code"], body["error"]["message"])
    return json_response(body, status=status)


@web.middleware
async def _metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    elapsed = time.perf_counter() - started
    HTTP_SECONDS.labels(route).observe(elapsed)
    if not response.prepared:  # a stream's headers are gone already
        response.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.2f}"
    HTTP_REQUESTS.labels(route, request.method, str(response.status)).inc()
    return response
