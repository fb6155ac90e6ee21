"""Plans: ``POST /pipelines/{name}/plan`` and ``POST /triggers/{name}/test`` answer what a run (or a
trigger's event) would be now, computed by the code that makes runs and written nowhere
(``daemon.planning.preview``).

Both need the ``run`` scope, not ``read``: a plan is computed, not looked up — it fingerprints the
datastore inputs (reading, and with ``hash: content`` hashing, their data) and a files test stats
the datastore — work as heavy as starting a run's, which a read-only token must not be able to
cause at will.
"""

from __future__ import annotations

from aiohttp import web

from daemon.api.context import SCHEDULER
from daemon.api.contract import endpoint
from daemon.api.http import json_response, read_body
from daemon.api.runs import RunBody
from daemon.errors import Unavailable
from daemon.planning.preview import Planner
from daemon.planning.sample_events import TestInput

routes = web.RouteTableDef()


def _planner(request: web.Request) -> Planner:
    scheduler = request.app.get(SCHEDULER)
    if scheduler is None:
        raise Unavailable("this daemon does not run the scheduler")
    return scheduler.planner


@routes.post("/api/v1/pipelines/{name}/plan")
@endpoint("run", body=RunBody)
async def plan_run(request: web.Request) -> web.Response:
    """What a run of the pipeline with this body (as ``POST /pipelines/{name}/runs`` takes) would be
    now: version, params, each step reused or executed and why, where ready steps would go."""
    body = RunBody() if not (await request.read()).strip() else await read_body(request)
    plan = await _planner(request).plan_run(
        request.match_info["name"], params=body.params, version=body.version, reuse=body.reuse
    )
    return json_response(plan.to_json())


@routes.post("/api/v1/triggers/{name}/test")
@endpoint("run", body=TestInput)
async def test_trigger(request: web.Request) -> web.Response:
    """What the trigger's event would become now: ``{"at": time}`` for cron (default: the next
    fire), ``{"file": path}`` for files, ``{"event": data, "subject"?: …}`` for nats, ``{"event":
    run summary}`` for run triggers."""
    body = TestInput() if not (await request.read()).strip() else await read_body(request)
    plan = await _planner(request).test_trigger(request.match_info["name"], body)
    return json_response(plan.to_json())
