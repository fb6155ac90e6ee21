"""Pipelines and their versions: read, publish, and the version lifecycle."""

from __future__ import annotations

from typing import Literal

import msgspec
from aiohttp import web

from daemon import store
from daemon.api.access import SCOPE
from daemon.api.apply import document_text, flag_arg
from daemon.api.context import POOL, SOURCES
from daemon.api.contract import BOOLEAN, DOCUMENT_TYPES, FILE_NAME, PAGED, endpoint
from daemon.api.http import decode_cursor, int_arg, json_response, limit_arg, page, read_body
from daemon.apply import apply_documents
from daemon.errors import Invalid, NotFound
from daemon.limits import Positive32

routes = web.RouteTableDef()


class DefaultBody(msgspec.Struct, forbid_unknown_fields=True):
    version: Positive32


class StatusBody(msgspec.Struct, forbid_unknown_fields=True):
    status: Literal["active", "deprecated", "disabled"]


@routes.get("/api/v1/pipelines")
@endpoint("read", query=PAGED)
async def list_pipelines(request: web.Request) -> web.Response:
    limit = limit_arg(request)
    async with request.app[POOL].acquire() as conn:
        records = await store.list_pipelines(conn, limit=limit + 1, after=decode_cursor(request, str))
    return json_response(page(records, limit, key=lambda record: record.name))


@routes.post("/api/v1/pipelines")
@endpoint("publish", content_types=DOCUMENT_TYPES, query={"no_default": BOOLEAN, "file": FILE_NAME})
async def publish_pipeline(request: web.Request) -> web.Response:
    """Publish one Pipeline document (JSON, or YAML with Content-Type: application/yaml)."""
    texts = [await document_text(request)]
    applied = await apply_documents(
        request.app[POOL],
        request.app[SOURCES],
        texts,
        make_default=not flag_arg(request, "no_default"),
        may_change_datastores=request[SCOPE] == "admin",
    )
    if len(applied) != 1 or applied[0].kind != "Pipeline":
        raise Invalid("POST /pipelines takes exactly one Pipeline document; use POST /apply for several")
    (result,) = applied
    async with request.app[POOL].acquire() as conn:
        version = await store.get_version(conn, result.name, result.version)
    return json_response(version.to_json(), status=201 if result.action == "published" else 200)


@routes.get("/api/v1/pipelines/{name}")
async def get_pipeline(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    async with request.app[POOL].acquire() as conn:
        record = await store.get_pipeline(conn, name)
        if record is None:
            raise NotFound(f"pipeline {name} does not exist")
        default = await store.get_version(conn, name)
    return json_response(record.to_json() | {"default": default.to_json() if default else None})


@routes.get("/api/v1/pipelines/{name}/versions")
@endpoint("read", query=PAGED)
async def list_versions(request: web.Request) -> web.Response:
    name, limit = request.match_info["name"], limit_arg(request)
    async with request.app[POOL].acquire() as conn:
        if await store.get_pipeline(conn, name) is None:
            raise NotFound(f"pipeline {name} does not exist")
        records = await store.list_versions(conn, name, limit=limit + 1, before=decode_cursor(request, int))
    return json_response(page(records, limit, key=lambda record: record.version))


@routes.get("/api/v1/pipelines/{name}/versions/{version}")
async def get_version(request: web.Request) -> web.Response:
    name, number = request.match_info["name"], int_arg(request, "version")
    async with request.app[POOL].acquire() as conn:
        record = await store.get_version(conn, name, number)
    if record is None:
        raise NotFound(f"pipeline {name} has no version {number}")
    return json_response(record.to_json())


@routes.put("/api/v1/pipelines/{name}/default")
@endpoint("publish", body=DefaultBody)
async def set_default(request: web.Request) -> web.Response:
    body = await read_body(request)
    async with request.app[POOL].acquire() as conn:
        record = await store.set_default(conn, request.match_info["name"], body.version)
    return json_response(record.to_json())


@routes.patch("/api/v1/pipelines/{name}/versions/{version}")
@endpoint("publish", body=StatusBody)
async def set_status(request: web.Request) -> web.Response:
    number = int_arg(request, "version")
    body = await read_body(request)
    async with request.app[POOL].acquire() as conn:
        record = await store.set_status(conn, request.match_info["name"], number, body.status)
    return json_response(record.to_json())
