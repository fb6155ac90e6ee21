"""Sluice's NATS trust and the credentials minted under it (tables ``nats_trust``, ``nats_credentials``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from daemon.store.db import Db


@dataclass(frozen=True, slots=True)
class TrustRecord:
    operator_seed: str
    system_seed: str
    account_seed: str
    signing_seed: str
    account_jwt: str
    account_issued_at: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> TrustRecord:
        return cls(**dict(row))


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    public_key: str
    name: str
    role: str
    grants: dict[str, Any] | None
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> CredentialRecord:
        return cls(**dict(row))


_TRUST = "operator_seed, system_seed, account_seed, signing_seed, account_jwt, account_issued_at, created_at"
_CREDENTIAL = "public_key, name, role, grants, created_at, revoked_at"


async def get_trust(db: Db, *, lock: bool = False) -> TrustRecord | None:
    """The trust, if one was made; with ``lock`` (inside a transaction) no other credential change
    runs until it ends."""
    row = await db.fetchrow(f"SELECT {_TRUST} FROM nats_trust" + (" FOR UPDATE" if lock else ""))
    return None if row is None else TrustRecord.from_row(row)


async def create_trust(db: Db, made: TrustRecord) -> TrustRecord:
    """Stores ``made`` unless a trust exists; returns the one stored (a concurrent first start's may
    win, and then both use it)."""
    row = await db.fetchrow(
        f"""
        WITH made AS (
            INSERT INTO nats_trust (operator_seed, system_seed, account_seed, signing_seed,
                                    account_jwt, account_issued_at)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (singleton) DO NOTHING
            RETURNING {_TRUST}
        )
        SELECT {_TRUST} FROM made UNION ALL SELECT {_TRUST} FROM nats_trust LIMIT 1
        """,
        made.operator_seed,
        made.system_seed,
        made.account_seed,
        made.signing_seed,
        made.account_jwt,
        made.account_issued_at,
    )
    return TrustRecord.from_row(row)


async def set_account(db: Db, account_jwt: str, issued_at: int) -> None:
    await db.execute("UPDATE nats_trust SET account_jwt = $1, account_issued_at = $2", account_jwt, issued_at)


async def insert_credential(
    db: Db, public_key: str, name: str, role: str, grants: dict[str, Any] | None
) -> CredentialRecord:
    row = await db.fetchrow(
        f"""
        INSERT INTO nats_credentials (public_key, name, role, grants) VALUES ($1, $2, $3, $4)
        RETURNING {_CREDENTIAL}
        """,
        public_key,
        name,
        role,
        grants,
    )
    return CredentialRecord.from_row(row)


async def roles(db: Db, name: str, *, active: bool = False) -> set[str]:
    """The roles of ``name``'s credentials (only those not revoked, with ``active``)."""
    rows = await db.fetch(
        "SELECT DISTINCT role FROM nats_credentials WHERE name = $1 AND (revoked_at IS NULL OR NOT $2)",
        name,
        active,
    )
    return {row["role"] for row in rows}


async def is_active(db: Db, public_key: str) -> bool:
    return bool(
        await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM nats_credentials WHERE public_key = $1 AND revoked_at IS NULL)",
            public_key,
        )
    )


async def list_credentials(db: Db) -> list[CredentialRecord]:
    rows = await db.fetch(f"SELECT {_CREDENTIAL} FROM nats_credentials ORDER BY name, created_at")
    return [CredentialRecord.from_row(row) for row in rows]


async def revoke(db: Db, name: str) -> list[CredentialRecord]:
    """Revokes ``name``'s keys that are not revoked yet; returns them."""
    rows = await db.fetch(
        f"""
        UPDATE nats_credentials SET revoked_at = now()
        WHERE name = $1 AND revoked_at IS NULL
        RETURNING {_CREDENTIAL}
        """,
        name,
    )
    return [CredentialRecord.from_row(row) for row in rows]


async def revoked_keys(db: Db) -> list[str]:
    """Every revoked key."""
    rows = await db.fetch("SELECT public_key FROM nats_credentials WHERE revoked_at IS NOT NULL ORDER BY 1")
    return [row["public_key"] for row in rows]
