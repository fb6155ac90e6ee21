"""Mounts the web UI on the API's application: the template environment, the static files and the
pages. The pages read through the same store functions as the API and act through the API itself
(from the browser, with the session cookie), so the UI can do nothing the API would not allow."""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from daemon.ui import agents, catalog, login, runs
from daemon.ui.views import FILTERS

STATIC = Path(__file__).parent / "static"


def install(app: web.Application) -> None:
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("daemon.ui", "templates"),
        autoescape=True,
        # The templates ship with the package: without this, every template and every {% include %}
        # (one per step row of a run page) stats its file to see whether it changed.
        auto_reload=False,
        filters=FILTERS,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # append_version: a changed script or stylesheet gets a new URL, so browsers may cache them.
    app.router.add_static("/static/", STATIC, name="static", append_version=True)
    for module in (login, runs, catalog, agents):
        app.router.add_routes(module.routes)
