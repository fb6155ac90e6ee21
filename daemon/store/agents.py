"""Agents as last seen: what each advertised and whether it is alive (``ready``, ``draining``, ``lost``).

The daemon's in-memory registry is the live view; this table is what outlives a restart and what
``GET /agents`` shows for agents the running daemon has not heard from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from daemon.store.db import Db

_COLUMNS = "id, name, labels, executors, capacity, datastores, status, first_seen_at, last_heartbeat"


@dataclass(frozen=True, slots=True)
class AgentRecord:
    id: str
    name: str
    labels: dict[str, str]
    executors: list[str]
    capacity: dict[str, Any]
    datastores: dict[str, str]
    status: str
    first_seen_at: datetime
    last_heartbeat: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> AgentRecord:
        return cls(**{name: row[name] for name in cls.__slots__})


async def upsert_agent(
    db: Db,
    *,
    id: str,
    name: str,
    labels: dict[str, str],
    executors: list[str],
    capacity: dict[str, Any],
    datastores: dict[str, str],
    status: str,
    last_heartbeat: float,
) -> None:
    """Records what agent ``id`` advertised at unix time ``last_heartbeat``."""
    await db.execute(
        """
        INSERT INTO agents (id, name, labels, executors, capacity, datastores, status, last_heartbeat)
        VALUES ($1, $2, $3, $4, $5, $6, $7, to_timestamp($8))
        ON CONFLICT (id) DO UPDATE SET name = excluded.name, labels = excluded.labels,
            executors = excluded.executors, capacity = excluded.capacity, datastores = excluded.datastores,
            status = excluded.status, last_heartbeat = excluded.last_heartbeat
        """,
        id,
        name,
        labels,
        executors,
        capacity,
        datastores,
        status,
        last_heartbeat,
    )


async def set_agent_status(db: Db, agent_id: str, status: str) -> None:
    await db.execute("UPDATE agents SET status = $2 WHERE id = $1", agent_id, status)


async def list_agents(db: Db) -> list[AgentRecord]:
    """Every agent ever seen, by name."""
    rows = await db.fetch(f"SELECT {_COLUMNS} FROM agents ORDER BY name, id")
    return [AgentRecord.from_row(row) for row in rows]
