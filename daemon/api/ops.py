"""Operations endpoints: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import inspect

import asyncpg
import msgspec
import prometheus_client
from aiohttp import web

from daemon.api.access import OPEN_PATHS
from daemon.api.context import NATS_ACCESS, NATS_CLIENT, POOL
from daemon.api.contract import READING, Endpoint, endpoint_of
from daemon.api.http import json_response
from daemon.store.db import ping

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
            await ping(conn)
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
    """The OpenAPI 3.1 document of ``app``'s routes, from what each declares (``daemon.api.contract``)."""
    routes = [
        route
        for route in app.router.routes()
        if route.method not in ("HEAD", "*")
        and route.resource is not None
        and (template := _template(route)) is not None
        and (template.startswith("/api/") or template in OPEN_PATHS - {"/login"})
    ]
    declared = {route: endpoint_of(route.handler, route.method) for route in routes}
    bodies = sorted(
        {item.body for item in declared.values() if item.body is not None}, key=lambda t: t.__name__
    )
    body_schemas, components = msgspec.json.schema_components(
        bodies, ref_template="#/components/schemas/{name}"
    )
    body_schema = dict(zip(bodies, body_schemas, strict=True))
    paths: dict[str, dict] = {}
    for route in routes:
        path, method, needs = _template(route), route.method, declared[route]
        doc = inspect.getdoc(route.handler) or route.handler.__name__.replace("_", " ")
        operation: dict = {
            "summary": doc.splitlines()[0],
            "description": doc,
            "operationId": route.handler.__name__,
            "parameters": _parameters(path, needs),
            "responses": RESPONSES,
        }
        if path in OPEN_PATHS or path.endswith("openapi.json"):
            operation["security"] = []
        else:
            operation["x-sluice-scope"] = needs.scope
            operation["description"] += f"\n\nNeeds a token with the `{needs.scope}` scope."
        if method not in READING:
            operation["requestBody"] = _request_body(needs, body_schema.get(needs.body))
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sluice",
            "version": "v1",
            "description": "Every route but /healthz, /readyz and /metrics needs `Authorization: Bearer "
            "<token>`. Requests that change something need a JSON (or, where stated, YAML or tar) "
            "Content-Type; their bodies are limited (SLUICE_API_MAX_BODY, 1 MiB by default).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {**components, "Error": ERROR},
        },
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }


RESPONSES = {
    "2XX": {"description": "done (JSON, or a step's log as text or server-sent events)"},
    "4XX": {
        "description": "what was wrong, in the error envelope",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
}
ERROR = {
    "type": "object",
    "required": ["error"],
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


def _template(route) -> str | None:
    info = route.resource.get_info()
    return info.get("formatter") or info.get("path")


def _parameters(path: str, needs: Endpoint) -> list[dict]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": needs.path_schema(name)} for name in names
    ]
    parameters += [{"name": name, "in": "query", "schema": schema} for name, schema in needs.query.items()]
    parameters += [{"name": name, "in": "header", "schema": schema} for name, schema in needs.headers.items()]
    return parameters


def _request_body(needs: Endpoint, schema: dict | None) -> dict:
    content: dict[str, dict] = {}
    for content_type in needs.content_types:
        if content_type == "application/json":
            content[content_type] = {"schema": schema or {"type": "object", "maxProperties": 0}}
        elif content_type in ("application/x-tar", "application/octet-stream"):
            content[content_type] = {"schema": {"type": "string", "format": "binary"}}
        else:
            content[content_type] = {"schema": {"type": "string"}}
    return {"required": needs.body is not None or needs.upload, "content": content}
