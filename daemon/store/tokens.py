"""API tokens (table ``api_tokens``): names, scopes and the digests of the tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from daemon.errors import Conflict
from daemon.store.db import Db


@dataclass(frozen=True, slots=True)
class TokenRecord:
    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> TokenRecord:
        return cls(row["name"], row["scope"], row["created_at"], row["revoked_at"])

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope,
            "status": "revoked" if self.revoked_at else "active",
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


async def scope_of(db: Db, digest: str) -> str | None:
    """The scope of the live token whose digest is ``digest``, else None."""
    return await db.fetchval("SELECT scope FROM api_tokens WHERE digest = $1 AND revoked_at IS NULL", digest)


async def create(db: Db, name: str, scope: str, digest: str) -> TokenRecord:
    """Stores a token; a revoked token's name may be used again.

    Raises ``Conflict`` when a live token has the name.
    """
    row = await db.fetchrow(
        """
        INSERT INTO api_tokens (name, scope, digest) VALUES ($1, $2, $3)
        ON CONFLICT (name) DO UPDATE
            SET scope = excluded.scope, digest = excluded.digest, created_at = now(), revoked_at = NULL
            WHERE api_tokens.revoked_at IS NOT NULL
        RETURNING name, scope, created_at, revoked_at
        """,
        name,
        scope,
        digest,
    )
    if row is None:
        raise Conflict(f"a token named {name} exists; revoke it first or pick another name")
    return TokenRecord.from_row(row)


async def list_tokens(db: Db) -> list[TokenRecord]:
    rows = await db.fetch("SELECT name, scope, created_at, revoked_at FROM api_tokens ORDER BY name")
    return [TokenRecord.from_row(row) for row in rows]


async def revoke(db: Db, name: str) -> TokenRecord | None:
    """Revokes token ``name``; None when no such token exists (a revoked one is returned as it is)."""
    row = await db.fetchrow(
        """
        UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE name = $1
        RETURNING name, scope, created_at, revoked_at
        """,
        name,
    )
    return None if row is None else TokenRecord.from_row(row)
