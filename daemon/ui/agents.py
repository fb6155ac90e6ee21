"""The agents page: each agent's capacity (CPU, memory, every GPU with its memory) and how much is
taken, its labels, the steps it runs, its heartbeat and its state."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon.api.agents import agent_items
from daemon.api.context import POOL, SCHEDULER
from daemon.api.contract import endpoint
from daemon.store.attempts import attempt_places
from daemon.ui.page import render
from daemon.ui.views import share

routes = web.RouteTableDef()


@routes.get("/agents")
@endpoint("read", page=True)
async def agents_page(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    items = await agent_items(pool, request.app.get(SCHEDULER))
    places = await attempt_places(pool, [attempt for item in items for attempt in item["running"]])
    return render(request, "agents.html", "agents", agents=[_view(item, places) for item in items])


def _view(item: dict[str, Any], places: dict) -> dict[str, Any]:
    capacity, free = item["capacity"], item["free"]
    cpu, memory = float(capacity.get("cpu", 0.0)), int(capacity.get("memory", 0))
    free_gpus = set(free.get("gpus", []))
    return item | {
        "bars": [
            {
                "label": "CPU",
                "used": f"{cpu - free['cpu']:g} of {cpu:g} cores",
                "percent": share(cpu - free["cpu"], cpu),
            },
            {
                "label": "Memory",
                "used": (memory - free["memory"], memory),
                "percent": share(memory - free["memory"], memory),
            },
        ],
        "gpus": [gpu | {"busy": gpu["index"] not in free_gpus} for gpu in capacity.get("gpus", [])],
        "steps": [places[attempt] for attempt in item["running"] if attempt in places],
    }
