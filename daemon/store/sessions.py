"""Web UI sessions: a session id's digest, the token it stands for, and when it ends."""

from __future__ import annotations

from datetime import datetime

from daemon.store.db import Db


async def open_session(db: Db, digest: str, token_digest: str, expires_at: datetime) -> None:
    """Stores a new session, and drops the sessions that have expired (logins are rare: cheap)."""
    await db.execute(
        """
        WITH expired AS (DELETE FROM ui_sessions WHERE expires_at < now())
        INSERT INTO ui_sessions (digest, token_digest, expires_at) VALUES ($1, $2, $3)
        """,
        digest,
        token_digest,
        expires_at,
    )


async def session_token(db: Db, digest: str) -> tuple[str, str | None] | None:
    """The digest of the token the live session ``digest`` stands for, with that token's scope (None
    when it is not a stored token: revoked, or the admin token, which is not stored); None for no
    such session, or one that expired."""
    row = await db.fetchrow(
        """
        SELECT s.token_digest, t.scope FROM ui_sessions s
        LEFT JOIN api_tokens t ON t.digest = s.token_digest AND t.revoked_at IS NULL
        WHERE s.digest = $1 AND s.expires_at > now()
        """,
        digest,
    )
    return None if row is None else (row["token_digest"], row["scope"])


async def close_session(db: Db, digest: str) -> None:
    await db.execute("DELETE FROM ui_sessions WHERE digest = $1", digest)
