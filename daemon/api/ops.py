"""Operations endpoints: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import inspect

import asyncpg
import prometheus_client
from aiohttp import web

from daemon.api.context import NATS_ACCESS, NATS_CLIENT, POOL
from daemon.api.http import json_response

routes = web.RouteTableDef()
READY_TIMEOUT_S = 2.0


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """PostgreSQL answers and NATS is connected: the daemon can do its work. ``nats_auth`` says
    whether NATS keeps clients without credentials off Sluice's subjects (false: anyone who reaches
    it can run commands on the agents)."""
    problems = []
    try:
        async with asyncio.timeout(READY_TIMEOUT_S), request.app[POOL].acquire() as conn:
            await conn.fetchval("SELECT 1")
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        problems.append(f"postgresql: {exc or type(exc).__name__}")
    if not request.app[NATS_CLIENT].is_connected:
        problems.append("nats: not connected")
    nats = request.app.get(NATS_ACCESS)
    auth = {} if nats is None else {"nats_auth": nats.auth}
    if problems:
        return json_response({"status": "unavailable", "problems": problems, **auth}, status=503)
    return json_response({"status": "ready", **auth})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the default registry."""
    return web.Response(
        body=prometheus_client.generate_latest(),
        headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
    )


@routes.get("/openapi.json")
@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """This API's OpenAPI 3.1 document, generated from the routes it serves."""
    return json_response(openapi_document(request.app))


def openapi_document(app: web.Application) -> dict:
    paths: dict[str, dict] = {}
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path")
        if path is None:
            continue
        doc = inspect.getdoc(route.handler) or route.handler.__name__.replace("_", " ")
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(path)
        ]
        paths.setdefault(path, {})[route.method.lower()] = {
            "summary": doc.splitlines()[0],
            "operationId": route.handler.__name__,
            "parameters": parameters,
            "responses": {
                "default": {
                    "description": "JSON; errors use the error envelope",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sluice", "version": "v1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "details"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "details": {"type": "array"},
                            },
                        }
                    },
                }
            },
        },
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
