"""Agents: the daemon's live view of each (free capacity as the daemon accounts it), and those only
known from the database."""

from __future__ import annotations

from aiohttp import web

from daemon.api.context import POOL, SCHEDULER
from daemon.api.http import json_response
from daemon.store import agents as agent_store

routes = web.RouteTableDef()


@routes.get("/api/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    """Agents with capacity, free capacity, labels, running attempts, last heartbeat and status."""
    live = {}
    if (scheduler := request.app.get(SCHEDULER)) is not None:
        live = {agent.id: agent.to_json() for agent in scheduler.registry.all()}
    items = []
    for record in await agent_store.list_agents(request.app[POOL]):
        item = live.pop(record.id, None)
        if item is None:
            capacity = record.capacity
            item = {
                "id": record.id,
                "name": record.name,
                "labels": record.labels,
                "executors": record.executors,
                "capacity": capacity,
                "free": {
                    "cpu": capacity.get("cpu", 0.0),
                    "memory": capacity.get("memory", 0),
                    "gpu": len(capacity.get("gpus", [])),
                },
                "running": [],
                "last_heartbeat": record.last_heartbeat.isoformat(),
                "status": record.status
                if record.status in ("lost", "stopped")
                else ("lost" if scheduler is not None else "ready"),
                "draining": record.status == "draining",
                "datastores": record.datastores,
            }
        elif item["last_heartbeat"] is None:
            item["last_heartbeat"] = record.last_heartbeat.isoformat()
        items.append(item)
    items.extend(live.values())
    items.sort(key=lambda item: (item["name"], item["id"]))
    return json_response({"items": items, "next_cursor": None})
