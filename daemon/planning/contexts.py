"""In-memory caches of what dispatch and step events need about runs: parsed version specs (versions
are immutable), each active run's rendering context, and the datastores' paths as the daemon sees
them. All are caches of the database, filled on demand and safe to drop."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec

from daemon.documents import PipelineSpec, StepSpec, spec_from_json
from daemon.errors import NotFound
from daemon.rules.partitions import Partition
from daemon.rules.rendering import RunContext
from daemon.rules.states import step_graph
from daemon.store.catalog import list_datastores
from daemon.store.db import Db
from daemon.store.pipelines import VersionRecord, get_version
from daemon.store.runs import RunRecord, get_run
from daemon.store.steps import partitions_of_run, reused_steps
from kit.objectstore import S3Location


@dataclass(frozen=True, slots=True)
class VersionSpec:
    pipeline: str
    version: int
    spec: PipelineSpec
    source_digest: str | None
    graph: dict[str, tuple[str, ...]]
    steps: dict[str, StepSpec]

    @property
    def fanning(self) -> list[str]:
        """The steps that fan out (``foreach``)."""
        return [name for name, step in self.steps.items() if step.foreach is not None]


def run_context(
    version: VersionSpec,
    run_id: UUID,
    params: Mapping[str, Any],
    reused: Mapping[str, tuple[str, str]] | None = None,
    partitions: Mapping[str, Partition] | None = None,
) -> RunContext:
    """What templates of a run of ``version`` see; ``reused``: reused step -> (run id, step) whose
    outputs it links; ``partitions``: its foreach steps' partitions by step run name."""
    return RunContext(
        id=str(run_id),
        pipeline=version.pipeline,
        version=version.version,
        params=params,
        spec=version.spec,
        source_digest=version.source_digest,
        reused=dict(reused or {}),
        partitions=dict(partitions or {}),
    )


class Specs:
    """Parsed specs by (pipeline, version); a version's spec never changes once published.

    Also a *hint* of each pipeline's default version, as last read: the default can change (from any
    daemon), so a run created from the hint must check it in the statement that creates the run.
    """

    def __init__(self) -> None:
        self._specs: dict[tuple[str, int], VersionSpec] = {}
        self._defaults: dict[str, int] = {}

    def cached(self, pipeline: str, version: int | None) -> VersionSpec | None:
        """The spec of ``version`` (None: the default version as last seen), when already parsed."""
        if version is None:
            version = self._defaults.get(pipeline)
            if version is None:
                return None
        return self._specs.get((pipeline, version))

    def seen_default(self, pipeline: str, version: int) -> None:
        self._defaults[pipeline] = version

    def of(self, record: VersionRecord) -> VersionSpec:
        key = (record.pipeline, record.version)
        found = self._specs.get(key)
        if found is None:
            spec = spec_from_json("Pipeline", record.spec)
            assert isinstance(spec, PipelineSpec)
            found = self._specs[key] = VersionSpec(
                record.pipeline,
                record.version,
                spec,
                record.source_digest,
                step_graph(spec),
                {step.name: step for step in spec.steps},
            )
        return found

    async def load(self, db: Db, pipeline: str, version: int) -> VersionSpec:
        found = self._specs.get((pipeline, version))
        if found is not None:
            return found
        record = await get_version(db, pipeline, version)
        if record is None:
            raise NotFound(f"pipeline {pipeline} has no version {version}")
        return self.of(record)


class RunContexts:
    """Rendering contexts of the runs that still have work, by run id."""

    def __init__(self, specs: Specs) -> None:
        self.specs = specs
        self._runs: dict[UUID, tuple[RunContext, VersionSpec]] = {}

    def put(
        self,
        run: RunRecord,
        version: VersionSpec,
        reused: Mapping[str, tuple[str, str]] | None = None,
        partitions: Mapping[str, Partition] | None = None,
    ) -> RunContext:
        """Caches the run's context (see :func:`run_context`)."""
        context = run_context(version, run.id, run.params, reused, partitions)
        self._runs[run.id] = (context, version)
        return context

    def get(self, run_id: UUID) -> tuple[RunContext, VersionSpec] | None:
        return self._runs.get(run_id)

    async def load(
        self, db: Db, run_id: UUID, run: RunRecord | None = None
    ) -> tuple[RunContext, VersionSpec]:
        """The run's context, read from the database when not cached.

        Raises:
            NotFound: the run (or its version) does not exist.
        """
        found = self._runs.get(run_id)
        if found is not None:
            return found
        if run is None:
            run = await get_run(db, run_id)
            if run is None:
                raise NotFound(f"run {run_id} does not exist")
        version = await self.specs.load(db, run.pipeline, run.version)
        self.put(run, version, await reused_steps(db, run_id), await partitions_of_run(db, run_id))
        return self._runs[run_id]

    def drop(self, run_id: UUID) -> None:
        self._runs.pop(run_id, None)

    def __len__(self) -> int:
        return len(self._runs)


class Datastores:
    """The datastores as the daemon sees them: ``paths`` of the ``local`` ones, ``stores`` (the
    locations) of the ``s3`` ones, by name."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}
        self.stores: dict[str, S3Location] = {}

    async def refresh(self, db: Db) -> None:
        paths: dict[str, str] = {}
        stores: dict[str, S3Location] = {}
        for record in await list_datastores(db):
            if record.type == "s3":
                stores[record.name] = msgspec.convert(record.spec, S3Location)
            else:
                paths[record.name] = str(record.spec.get("path", ""))
        self.paths, self.stores = paths, stores

    def for_agent(self, overrides: dict[str, str]) -> dict[str, str]:
        """The paths an agent sees: its own announced ones over the daemon's."""
        return self.paths | overrides if overrides else self.paths
