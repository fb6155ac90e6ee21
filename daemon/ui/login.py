"""Logging in and out: a person gives a token once; it is kept in an HttpOnly, SameSite=Strict
cookie (no script can read it, and no other site's request carries it)."""

from __future__ import annotations

from aiohttp import web

from daemon.api.access import ACCESS, SESSION_COOKIE
from daemon.api.contract import FORM, endpoint
from daemon.ui.page import render

routes = web.RouteTableDef()

SESSION_S = 12 * 3600
"""How long a login lasts; the token itself lasts until it is revoked."""
MAX_TOKEN = 512


def _next_page(raw: str | None) -> str:
    """Where to go after logging in: a path of this daemon only (``//host`` or a URL would send the
    person elsewhere)."""
    if not raw or not raw.startswith("/") or raw.startswith("//") or "\\" in raw:
        return "/"
    return raw


@routes.get("/login")
@endpoint("read", page=True)
async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.html", "login", next=_next_page(request.query.get("next")), error=None)


@routes.post("/login")
@endpoint("read", page=True, content_types=(FORM,))
async def log_in(request: web.Request) -> web.Response:
    form = await request.post()
    token = str(form.get("token", "")).strip()
    then = _next_page(str(form.get("next", "")))
    scope = await request.app[ACCESS].scope_of(token) if 0 < len(token) <= MAX_TOKEN else None
    if scope is None:
        response = render(request, "login.html", "login", next=then, error="That token is not valid.")
        response.set_status(401)
        return response
    response = web.Response(status=303, headers={"Location": then})
    response.set_cookie(
        SESSION_COOKIE,
        token,
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
    response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response
