"""Manual runs (REST, CLI, ``sluice.submit``): creating one for a pipeline version, exactly once per
idempotency key, through the one creation path (``daemon.planning.creation``).

A run beyond its pipeline's concurrency limit is created held (``on_limit: queue``) or not at all
(``on_limit: skip``: a 409 Conflict says why); the rule is ``daemon.rules.admission``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from daemon.errors import Invalid, NotFound
from daemon.planning.contexts import VersionSpec
from daemon.planning.creation import Draft, RunCreation, Written
from daemon.rules.admission import disabled, refuse_version
from daemon.rules.params import validate_params
from daemon.store import new_runs as new_run_store
from daemon.store import runs as run_store
from daemon.store.pipelines import VersionRecord, get_version, is_default, pipeline_exists

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Created:
    run: run_store.RunRecord
    created: bool  # False: an earlier request with the same idempotency key created it


class ManualRuns:
    """Runs asked for by a person or a service: REST, the CLI and ``sluice.submit``."""

    def __init__(self, *, pool: asyncpg.Pool, creation: RunCreation) -> None:
        self._pool = pool
        self._creation = creation
        self._specs = creation.specs

    async def create(
        self,
        pipeline: str,
        *,
        params: Mapping[str, Any],
        version: int | None = None,
        reuse: bool = True,
        idempotency_key: str | None = None,
        trigger: str | None = None,
        event_id: int | None = None,
        resolution: str | None = None,
    ) -> Created:
        """Creates a run of ``pipeline`` (its default version, or ``version``) through the one creation
        path (``daemon.planning.creation``), a batch of one: the run (queued, held, or succeeded when
        every step is reused) and all its step runs in one statement; then hands it over.

        The version's spec comes from the cache when it is there (versions never change), so the hot path
        reads only what reuse planning needs before the insert; the insert itself checks that the
        version is enabled and, when it was taken as the default, still is. A stale cache costs a
        re-read, never a run of the wrong version.

        Raises:
            NotFound: no such pipeline or version.
            Conflict: the version is disabled, or the pipeline is at its ``max_active_runs`` with
                ``on_limit: skip``.
            Invalid: the params do not match the version's schema (details name ``params.X``).
        """
        options = {
            "reuse": reuse,
            "trigger": trigger,
            "event_id": event_id,
            "idempotency_key": idempotency_key,
            "resolution": resolution or resolution_of(version),
        }
        async with self._pool.acquire() as conn:
            if idempotency_key is not None:
                existing = await run_store.find_run_by_key(conn, pipeline, idempotency_key)
                if existing is not None:
                    return Created(existing, False)
            written = None
            if (cached := self._specs.cached(pipeline, version)) is not None:
                try:
                    written = await self._insert(
                        conn, cached, params, only_if_default=version is None, **options
                    )
                except Invalid:
                    if version is not None:  # an explicit version's schema never changes
                        raise
                    # The default may have moved to a version with other params: decided below.
            if written is None:
                record = await read_version(conn, pipeline, version)
                if version is None:
                    self._specs.seen_default(pipeline, record.version)
                if (refused := refuse_version(pipeline, record.version, record.status)) is not None:
                    raise refused.error
                written = await self._insert(
                    conn, self._specs.of(record), params, only_if_default=False, **options
                )
                if written is None:
                    existing = None
                    if idempotency_key is not None:  # a concurrent request with the same key won
                        existing = await run_store.find_run_by_key(conn, pipeline, idempotency_key)
                    if existing is None:  # disabled between the read and the insert
                        raise disabled(pipeline, record.version)
                    return Created(existing, False)
            # Handed over before the connection goes back to the pool: the hot path.
            await self._creation.hand_over(written)
        log.debug(
            "run_created",
            run_id=str(written.run.id),
            pipeline=pipeline,
            version=written.run.version,
            held=written.run.held,
            reused=len(written.draft.links),
        )
        return Created(written.run, True)

    def draft(self, spec: VersionSpec, params: Mapping[str, Any], *, reuse: bool) -> Draft:
        """The draft of a manual run of ``spec``: its params validated (a plan makes the same one).

        Raises:
            Invalid: the params do not match the version's schema (details name ``params.X``).
        """
        values = validate_params(
            spec.spec.params,
            params,
            what=f"pipeline {spec.pipeline} version {spec.version}",
            max_bytes=self._creation.params_max_bytes,
        )
        return Draft(spec, values, reuse=reuse)

    async def _insert(
        self,
        conn: asyncpg.Connection,
        spec: VersionSpec,
        params: Mapping[str, Any],
        *,
        only_if_default: bool,
        **options: Any,
    ) -> Written | None:
        """Validates ``params`` against ``spec`` and makes the run; None when nothing was inserted (see
        :func:`new_run_store.insert_run`).

        Raises:
            Invalid: the params do not match the version's schema.
            Conflict: at the concurrency limit with ``on_limit: skip``.
        """
        draft = self.draft(spec, params, reuse=options["reuse"])
        values = draft.params

        async def write(drafts: Sequence[Draft]) -> Written | None:
            if draft.verdict.error is not None:
                if only_if_default and not await is_default(conn, spec.pipeline, spec.version):
                    return None  # decided by a stale default's limit: the caller reads the default again
                raise draft.verdict.error
            inserted = await new_run_store.insert_run(
                conn,
                pipeline=spec.pipeline,
                version=spec.version,
                params=values,
                only_if_default=only_if_default,
                run_id=draft.run_id,
                finished=draft.finished,
                steps=draft.steps,
                held=draft.held,
                **options,
            )
            return None if inserted is None else Written(*inserted, draft)

        written = await self._creation.create(conn, [draft], write)
        if written is None:
            self._creation.unclaim(draft)
        return written


def resolution_of(version: int | None) -> str:
    """How a manual run's version was chosen: asked for by number, or the pipeline's default."""
    return "manual" if version is not None else "default"


async def read_version(conn: asyncpg.Connection, pipeline: str, version: int | None) -> VersionRecord:
    """Version ``version`` of ``pipeline`` (its default when None).

    Raises:
        NotFound: no such pipeline or version.
    """
    record = await get_version(conn, pipeline, version)
    if record is None:
        if version is not None and await pipeline_exists(conn, pipeline):
            raise NotFound(f"pipeline {pipeline} has no version {version}")
        raise NotFound(f"pipeline {pipeline} does not exist")
    return record
