"""Agents: the daemon's live view of each (free capacity as the daemon accounts it), and those only
known from the database."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from daemon.api.context import POOL, SCHEDULER
from daemon.api.http import json_response
from daemon.runtime.scheduler import Scheduler
from daemon.store import agents as agent_store

routes = web.RouteTableDef()


@routes.get("/api/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    """Agents with capacity, free capacity, labels, running attempts, last heartbeat and status."""
    items = await agent_items(request.app[POOL], request.app.get(SCHEDULER))
    return json_response({"items": items, "next_cursor": None})


async def agent_items(pool: asyncpg.Pool, scheduler: Scheduler | None) -> list[dict[str, Any]]:
    """Every agent in the contract's shape, by name: the live view of this daemon's registry where it
    has one (the leader's), else what the database knows."""
    live = {}
    if scheduler is not None:
        live = {agent.id: agent.to_json() for agent in scheduler.registry.all()}
    items = []
    for record in await agent_store.list_agents(pool):
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
                    "gpus": [gpu["index"] for gpu in capacity.get("gpus", [])],
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
    return items
