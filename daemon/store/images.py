"""Container images: the latest digest agents reported for each image reference as steps write it.

Reports are written by :func:`daemon.store.attempt_reports.start_attempts`, in the statement that
marks an attempt running (each attempt keeps its own ``image_digest`` too); the last report applied
wins.
"""

from __future__ import annotations

from collections.abc import Sequence

from daemon.store.db import Db


async def image_digests(db: Db, references: Sequence[str]) -> dict[str, str]:
    """The latest digest reported for each of ``references`` (as written in steps' ``image``); a
    reference no agent has reported a digest for yet is absent."""
    if not references:
        return {}
    rows = await db.fetch(
        "SELECT reference, digest FROM images WHERE reference = ANY($1::text[])",
        list(dict.fromkeys(references)),
    )
    return {row["reference"]: row["digest"] for row in rows}
