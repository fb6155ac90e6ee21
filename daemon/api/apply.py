"""Applying documents over HTTP, and the upload of source snapshots they refer to."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from daemon.api.access import SCOPE
from daemon.api.context import POOL, SCHEDULER, SOURCES
from daemon.api.contract import BOOLEAN, DOCUMENT_TYPES, YAML_TYPES, endpoint
from daemon.api.http import json_response, read_body
from daemon.apply import SOURCE_DIGEST, SourceRef, apply_documents
from daemon.documents import SourceText
from daemon.documents.source import archive_digest
from daemon.errors import BadRequest, Invalid, NotFound

routes = web.RouteTableDef()


class ApplyBody(msgspec.Struct, forbid_unknown_fields=True):
    documents: list[SourceText]
    sources: list[SourceRef] = []
    make_default: bool = True


def flag_arg(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() in ("1", "true", "yes")


async def document_text(request: web.Request) -> SourceText:
    """The request body as one text of documents: YAML, or JSON (which YAML reads as well)."""
    try:
        text = (await request.read()).decode()
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8 text") from None
    return SourceText(file=request.query.get("file", "<request>"), text=text)


@routes.post("/api/v1/apply")
@endpoint("publish", body=ApplyBody, content_types=DOCUMENT_TYPES, query={"no_default": BOOLEAN})
async def apply(request: web.Request) -> web.Response:
    """Apply a batch: JSON {documents: [{file, text}], sources: [{file, source, digest}]}, or a YAML body."""
    if request.content_type in YAML_TYPES:
        body = ApplyBody(
            documents=[await document_text(request)], make_default=not flag_arg(request, "no_default")
        )
    else:
        body = await read_body(request)
    applied = await apply_documents(
        request.app[POOL],
        request.app[SOURCES],
        body.documents,
        body.sources,
        make_default=body.make_default,
        may_change_datastores=request[SCOPE] == "admin",
    )
    if (scheduler := request.app.get(SCHEDULER)) is not None:
        await scheduler.triggers_applied(applied)
    return json_response({"items": applied})


def _digest_arg(request: web.Request) -> str:
    digest = request.match_info["digest"]
    if not SOURCE_DIGEST.match(digest):
        raise BadRequest(f"{digest!r} is not a source digest (sha256:<64 hex digits>)")
    return digest


@routes.get("/api/v1/sources/{digest}")
async def get_source(request: web.Request) -> web.Response:
    digest = _digest_arg(request)
    if not await request.app[SOURCES].has(digest):
        raise NotFound(f"source snapshot {digest} is not stored")
    if request.method == "HEAD":
        return web.Response()
    return web.Response(body=await request.app[SOURCES].get(digest), content_type="application/x-tar")


@routes.put("/api/v1/sources/{digest}")
@endpoint("publish", content_types=("application/x-tar", "application/octet-stream"), upload=True)
async def put_source(request: web.Request) -> web.Response:
    """Store a snapshot archive; its content must hash to the digest it is stored under."""
    digest = _digest_arg(request)
    if await request.app[SOURCES].has(digest):
        return json_response({"digest": digest, "stored": False})
    archive = await request.read()
    actual = await asyncio.to_thread(archive_digest, archive)
    if actual != digest:
        raise Invalid(f"the archive's content hashes to {actual}, not {digest}")
    await request.app[SOURCES].put(digest, archive)
    return json_response({"digest": digest, "stored": True}, status=201)
