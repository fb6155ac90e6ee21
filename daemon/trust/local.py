"""Credentials files for what runs on the daemon's own machine: the agents of `sluice up` and the
services of its users, under ``DATA_DIR/credentials``. A file is kept across restarts while its key
is valid, and replaced when it was revoked (or is missing or unreadable)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import structlog

from daemon.private_files import write_private
from daemon.store import credentials as store
from daemon.trust import authority
from daemon.trust.permissions import Role, ServiceGrant
from kit.nats import read_creds_claims

log = structlog.get_logger(__name__)

SERVICE = "local-service"
"""The local services' identity: may submit to and follow every pipeline, and publish on any
subject outside Sluice's own (trigger subjects)."""
SERVICE_GRANT = ServiceGrant(publish=(">",))


def credentials_dir(data_dir: Path) -> Path:
    return data_dir / "credentials"


def agent_creds_path(data_dir: Path, name: str) -> Path:
    return credentials_dir(data_dir) / "agents" / f"{name}.creds"


def service_creds_path(data_dir: Path) -> Path:
    return credentials_dir(data_dir) / "service.creds"


async def ensure(
    pool: asyncpg.Pool, path: Path, role: Role, name: str, grant: ServiceGrant | None = None
) -> Path:
    """``path`` holds valid credentials for ``name`` in ``role``; minted now if it did not."""
    try:
        claims = read_creds_claims(str(path))
    except (OSError, ValueError):
        claims = {}
    if claims.get("name") == name and await store.is_active(pool, claims.get("sub", "")):
        return path
    issued = await authority.issue(pool, role, name, grant)
    write_private(path, issued.creds)
    log.info("local_credentials_written", name=name, role=role, path=str(path))
    return path
