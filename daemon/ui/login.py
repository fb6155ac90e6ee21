"""Logging in and out: a person gives a token once; it is kept in an HttpOnly, SameSite=Strict
cookie (no script can read it, and no other site's request carries it)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from aiohttp import web

from daemon.api.access import ACCESS, SESSION_COOKIE, digest
from daemon.api.context import POOL
from daemon.api.contract import FORM, endpoint
from daemon.errors import Forbidden
from daemon.store import sessions as session_store
from daemon.ui.page import render

routes = web.RouteTableDef()

SESSION_S = 12 * 3600
"""How long a login lasts (the session, here and in the browser); the token lasts until it is revoked."""
MAX_TOKEN = 512


def _next_page(raw: str | None) -> str:
    """Where to go after logging in: a path of this daemon only. ``//host``, a URL, a backslash or a
    control character (browsers drop tabs and newlines from URLs: ``/\t/host`` is ``//host``) would
    send the person elsewhere."""
    if not raw or not raw.startswith("/") or any(ord(c) < 0x21 or ord(c) == 0x7F or c == "\\" for c in raw):
        return "/"
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or raw.startswith("//"):
        return "/"
    return raw


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.html", "login", next=_next_page(request.query.get("next")), error=None)


@routes.post("/login")
async def log_in(request: web.Request) -> web.Response:
    """Open to anyone (the guard passes it by), but only from this daemon's own login page: without
    an Origin, another site could log a person in as someone else (login CSRF)."""
    if request.headers.get("Origin") is None:
        raise Forbidden("log in from this daemon's login page (the request has no Origin)")
    form = await request.post()
    token = str(form.get("token", "")).strip()
    then = _next_page(str(form.get("next", "")))
    scope = await request.app[ACCESS].scope_of(token) if 0 < len(token) <= MAX_TOKEN else None
    if scope is None:
        response = render(request, "login.html", "login", next=then, error="That token is not valid.")
        response.set_status(401)
        return response
    session = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(seconds=SESSION_S)
    await session_store.open_session(request.app[POOL], digest(session), digest(token), expires)
    response = web.Response(status=303, headers={"Location": then})
    response.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=SESSION_S,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


@routes.post("/logout")
@endpoint("read", page=True, content_types=(FORM,))
async def log_out(request: web.Request) -> web.Response:
    """Closes the session here, not only in this browser: a copy of the cookie opens nothing after."""
    if session := request.cookies.get(SESSION_COOKIE):
        await session_store.close_session(request.app[POOL], digest(session))
        request.app[ACCESS].forget()
    response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response
