"""Applying documents: validate a whole batch, then publish and upsert it in one transaction.

Nothing is applied unless every document of the batch validates (contract §2, `sluice apply`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

import asyncpg
import msgspec

from daemon import store
from daemon.documents import (
    Document,
    DocumentErrors,
    ParamSpec,
    Problem,
    RunSource,
    SourceText,
    TriggerSpec,
    check_references,
    parse_documents,
    spec_to_json,
    version_digest,
)
from daemon.errors import Forbidden
from daemon.metrics import VERSIONS_PUBLISHED
from daemon.runtime.bus import SourceStore

SOURCE_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
Action = Literal["created", "updated", "unchanged", "published"]
# Datastores first, triggers last: a batch may define what its later documents refer to.
APPLY_ORDER = {"Datastore": 0, "Pipeline": 1, "Trigger": 2}


class SourceRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The uploaded snapshot of the `source:` directory that a document in `file` names."""

    file: str
    source: str
    digest: str


class Applied(msgspec.Struct, frozen=True, omit_defaults=True):
    kind: str
    name: str
    action: Action
    version: int | None = None


async def apply_documents(
    pool: asyncpg.Pool,
    sources: SourceStore,
    texts: Sequence[SourceText],
    source_refs: Sequence[SourceRef] = (),
    *,
    make_default: bool = True,
    may_change_datastores: bool = True,
) -> list[Applied]:
    """Validate every document in ``texts``, then apply them all in one transaction.

    Without ``may_change_datastores`` (a caller below the ``admin`` scope), a Datastore document
    may only restate a datastore as it is: a datastore says where agents read and write and which
    credentials the daemon and agents send to which endpoint, so whoever defines one is trusted with
    them.

    Raises `DocumentErrors` listing every problem found, before anything is written, and
    `Forbidden` (nothing written) for a datastore the caller may not create or change.
    """
    documents = parse_documents(texts)
    digests = {(ref.file, ref.source): ref.digest for ref in source_refs}
    problems = await _source_problems(documents, digests, sources)
    async with pool.acquire() as conn:
        problems += check_references(
            documents,
            datastores=await store.datastore_names(conn),
            pipeline_params=await _target_params(conn, documents),
        )
        if problems:
            raise DocumentErrors(problems)
        async with conn.transaction():
            applied = [
                await _apply_one(
                    conn,
                    document,
                    digests,
                    make_default=make_default,
                    may_change_datastores=may_change_datastores,
                )
                for document in sorted(documents, key=lambda d: APPLY_ORDER[d.kind])
            ]
    VERSIONS_PUBLISHED.inc(sum(item.action == "published" for item in applied))
    return applied


async def _apply_one(
    conn: asyncpg.Connection,
    document: Document,
    digests: Mapping[tuple[str, str], str],
    *,
    make_default: bool,
    may_change_datastores: bool,
) -> Applied:
    spec = document.spec
    if document.kind == "Datastore":
        record, action = await store.upsert_datastore(conn, document.name, spec.type, spec.settings())
        if action != "unchanged" and not may_change_datastores:
            raise Forbidden(
                f"{document.file}:{document.line}: Datastore {document.name}: creating or changing a "
                "datastore needs the admin scope (it names the endpoint and credentials agents and the "
                "daemon use)"
            )
        return Applied(document.kind, record.name, action)
    if document.kind == "Trigger":
        record, action = await store.upsert_trigger(
            conn,
            name=document.name,
            pipeline=spec.pipeline,
            version=spec.version,
            source=spec.source,
            spec=spec_to_json(spec),
        )
        return Applied(document.kind, record.name, action)
    source_digest = _source_digest(spec.source, document.file, digests) if spec.source else None
    stored_spec = spec_to_json(spec) | {"source": source_digest}
    version, created = await store.publish_version(
        conn,
        pipeline=document.name,
        digest=version_digest(spec, source_digest),
        source_digest=source_digest,
        spec=stored_spec,
        make_default=make_default,
    )
    return Applied(document.kind, document.name, "published" if created else "unchanged", version.version)


def _source_digest(source: str, file: str, digests: Mapping[tuple[str, str], str]) -> str | None:
    """The snapshot a `source:` names: uploaded with the batch, or given as a digest outright."""
    if SOURCE_DIGEST.match(source):
        return source
    return digests.get((file, source))


async def _source_problems(
    documents: Sequence[Document], digests: Mapping[tuple[str, str], str], sources: SourceStore
) -> list[Problem]:
    problems = []
    for document in documents:
        source = getattr(document.spec, "source", None) if document.kind == "Pipeline" else None
        if not source:
            continue
        digest = _source_digest(source, document.file, digests)
        if digest is None:
            problems.append(
                Problem(
                    document.file,
                    document.line,
                    "source",
                    f"directory {source!r} was not uploaded with the documents "
                    "(sluice apply uploads it; over HTTP, PUT /api/v1/sources/{digest} first)",
                )
            )
        elif not await sources.has(digest):
            problems.append(
                Problem(
                    document.file,
                    document.line,
                    "source",
                    f"snapshot {digest} of {source!r} is not in the source store; upload it first",
                )
            )
    return problems


async def _target_params(conn: asyncpg.Connection, documents: Sequence[Document]):
    """The parameter schema of every stored pipeline version that the batch's triggers point at."""
    targets = {
        target
        for document in documents
        if isinstance(document.spec, TriggerSpec)
        for target in _pipelines_named(document.spec)
    }
    params: dict[tuple[str, int | None], Mapping[str, ParamSpec]] = {}
    for name, version in targets:
        record = await store.get_version(conn, name, version)
        if record is not None:
            params[(name, version)] = msgspec.convert(record.spec.get("params") or {}, dict[str, ParamSpec])
    return lambda name, version: params.get((name, version))


def _pipelines_named(spec: TriggerSpec) -> list[tuple[str, int | None]]:
    """(pipeline, version) pairs whose params `check_references` may ask for about this trigger."""
    named: list[tuple[str, int | None]] = [(spec.pipeline, spec.version), (spec.pipeline, None)]
    if isinstance(spec.on, RunSource):
        named.append((spec.on.pipeline, None))
    return named
