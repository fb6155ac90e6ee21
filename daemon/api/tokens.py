"""API tokens: made with a scope, listed, revoked. Admin only. A new token is shown once; Sluice
keeps only its digest."""

from __future__ import annotations

import secrets
from pathlib import Path

import msgspec
import structlog
from aiohttp import web

from daemon.api.access import ACCESS, digest
from daemon.api.context import POOL
from daemon.api.contract import IDENTITY, Identity, Scope, endpoint, whole
from daemon.api.http import json_response, read_body
from daemon.errors import NotFound
from daemon.private_files import write_private
from daemon.store import tokens as token_store

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()
TOKEN_PREFIX = "slc_"


class NewToken(msgspec.Struct, forbid_unknown_fields=True):
    name: Identity
    scope: Scope

    def __post_init__(self) -> None:
        whole(IDENTITY, self.name)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def admin_token_file(path: Path) -> str:
    """The admin token kept at ``path`` (mode 0600), made now on a first start."""
    try:
        if token := path.read_text().strip():
            return token
    except FileNotFoundError:
        pass
    token = new_token()
    write_private(path, token + "\n")
    log.info("api_token_created", path=str(path))
    return token


@routes.post("/api/v1/tokens")
@endpoint("admin", body=NewToken)
async def create_token(request: web.Request) -> web.Response:
    """Make a token: ``{"name", "scope": "read"|"run"|"publish"|"admin"}`` → 201 with the token,
    shown this once."""
    body: NewToken = await read_body(request)
    token = new_token()
    record = await token_store.create(request.app[POOL], body.name, body.scope, digest(token))
    return json_response(record.to_json() | {"token": token}, status=201)


@routes.get("/api/v1/tokens")
@endpoint("admin")
async def list_tokens(request: web.Request) -> web.Response:
    """Every token made, live or revoked (never the tokens themselves)."""
    records = await token_store.list_tokens(request.app[POOL])
    return json_response({"items": [record.to_json() for record in records], "next_cursor": None})


@routes.post("/api/v1/tokens/{name}/revoke")
@endpoint("admin", path={"name": IDENTITY})
async def revoke_token(request: web.Request) -> web.Response:
    """Revoke a token: it is refused from now on."""
    name = request.match_info["name"]
    record = await token_store.revoke(request.app[POOL], name)
    if record is None:
        raise NotFound(f"no token named {name}")
    request.app[ACCESS].forget()
    return json_response(record.to_json())
