"""What reuse planning reads: earlier step runs with the fingerprints a new run's steps have, and
the steps of each pipeline's latest run (what a step that runs is compared with, and the partitions
a ``foreach`` step's new partitions stick to)."""

from __future__ import annotations

from collections.abc import Sequence

from daemon.rules.reuse import Earlier, Origin
from daemon.store.db import Db

_LOOK_UP = """
SELECT 'match' AS kind, NULL AS pipeline, * FROM (
    SELECT DISTINCT ON (fingerprint) fingerprint, id, run_id, name, outputs, status,
           NULL::jsonb AS components, NULL::jsonb AS item
    FROM step_runs WHERE fingerprint = ANY($2::text[]) AND status = 'succeeded'
    ORDER BY fingerprint, finished_at DESC
) matches
UNION ALL
SELECT 'previous', p.name, s.fingerprint, s.id, s.run_id, s.name, NULL, s.status, s.components, s.item
FROM unnest($1::text[]) AS p(name)
CROSS JOIN LATERAL (
    SELECT id FROM runs WHERE pipeline = p.name ORDER BY created_at DESC, id DESC LIMIT 1
) latest
JOIN step_runs s ON s.run_id = latest.id
"""


async def look_up(
    db: Db, pipelines: Sequence[str], fingerprints: Sequence[str]
) -> tuple[dict[str, Origin], dict[str, dict[str, Earlier]]]:
    """In one round trip: the latest succeeded step run of each of ``fingerprints``, and the steps
    of each pipeline's latest run, by pipeline and step name."""
    matches: dict[str, Origin] = {}
    previous: dict[str, dict[str, Earlier]] = {}
    for row in await db.fetch(_LOOK_UP, list(pipelines), list(fingerprints)):
        if row["kind"] == "match":
            matches[row["fingerprint"]] = Origin(row["id"], row["run_id"], row["name"], row["outputs"])
        else:
            earlier = Earlier(row["run_id"], row["status"], row["components"], row["item"])
            previous.setdefault(row["pipeline"], {})[row["name"]] = earlier
    return matches, previous
