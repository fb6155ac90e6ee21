"""What every page shares: the context its template gets (who is looking and what they may do), and
how a failure is shown to a person (an HTML page, not the API's JSON envelope)."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from daemon.api.access import OPEN_PATHS, SCOPE, granted


def render(request: web.Request, template: str, active: str, **values: Any) -> web.Response:
    """``template`` with ``values``, the scope of the viewer, and what that scope may do (``can_run``:
    start and cancel runs, pause and resume triggers; ``can_publish``: the version lifecycle)."""
    scope = request.get(SCOPE)
    context = {
        "active": active,
        "scope": scope,
        "can_run": granted(scope, "run"),
        "can_publish": granted(scope, "publish"),
        **values,
    }
    response = aiohttp_jinja2.render_template(template, request, context)
    response.headers["Cache-Control"] = "no-store"
    return response


def is_page(request: web.Request) -> bool:
    """Whether a failure of ``request`` should be shown as a page: anything but the API and the
    operations' routes."""
    return not request.path.startswith("/api/") and request.path not in OPEN_PATHS - {"/login"}


def error_page(request: web.Request, status: int, code: str, message: str) -> web.Response:
    response = aiohttp_jinja2.render_template(
        "error.html",
        request,
        {"active": "", "scope": request.get(SCOPE), "status": status, "code": code, "message": message},
        status=status,
    )
    response.headers["Cache-Control"] = "no-store"
    return response
