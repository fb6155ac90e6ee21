"""The partitions of a new run's ``foreach`` steps, with what each partition's fingerprint covers:
its own files (listed and fingerprinted off the event loop, sticky to the pipeline's previous run of
the step), its list item, or its shard index (``daemon.rules.partitions``); the step's own decision
(how its partitions went); and reused partitions' outputs linked (copied, in an object store) into
the new run's."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import msgspec
import obstore
from obstore.store import S3Store

from daemon.documents.specs import FromDatastore, OverFiles, OverItems, StepSpec
from daemon.documents.template import render
from daemon.planning.contexts import Datastores
from daemon.planning.data_fingerprints import DataFingerprints
from daemon.planning.store_fingerprints import StoreFingerprints
from daemon.rules.partitions import Partition, items, shards, step_of
from daemon.rules.rendering import output_path
from daemon.rules.reuse import Decision, Earlier, key_of
from daemon.rules.step_fingerprints import fingerprint
from kit.objectstore import Manifest, ManifestFile, StoreError, encode_manifest, manifest_key, published
from triggers.files.matching import compile_glob

COPY_CONCURRENCY = 16
"""Objects copied at once into a new run for its reused partitions."""

Fanned = list[tuple[Partition, str]]
"""A step's partitions, each with the fingerprint of what it covers."""


def previous_files(step: str, earlier: Mapping[str, Earlier]) -> dict[int, list[str]]:
    """The files of each partition of ``step`` at the pipeline's previous run (index -> files)."""
    found: dict[int, list[str]] = {}
    for name, run in earlier.items():
        if step_of(name) == step and name != step and isinstance(run.item, dict):
            found[int(name[len(step) + 1 : -1])] = list(run.item.get("files", []))
    return found


async def fan_out(
    step: StepSpec,
    params: Mapping[str, Any],
    values: Mapping[str, str],
    *,
    datastores: Datastores,
    data: DataFingerprints,
    objects: StoreFingerprints,
    earlier: Mapping[str, Earlier],
) -> Fanned:
    """``step``'s partitions for a run with ``params`` (``values``: its rendering values).

    Raises:
        TemplateError: the input's path cannot be rendered, or is outside its datastore.
        DataUnreadable: the input's files cannot be listed or read.
    """
    assert step.foreach is not None
    over = step.foreach.over
    if isinstance(over, OverFiles):
        return await _files(
            step, over, values, datastores=datastores, data=data, objects=objects, earlier=earlier
        )
    made = items(params[over.param]) if isinstance(over, OverItems) else shards(over.count)
    return [(partition, _item_print(partition.item)) for partition in made]


async def _files(
    step: StepSpec,
    over: OverFiles,
    values: Mapping[str, str],
    *,
    datastores: Datastores,
    data: DataFingerprints,
    objects: StoreFingerprints,
    earlier: Mapping[str, Earlier],
) -> Fanned:
    source = step.inputs[over.input]
    assert isinstance(source, FromDatastore)  # documents refuse anything else
    relative = render(source.path, values)
    path = datastores.where(source.datastore, relative)
    pattern = compile_glob(over.pattern)

    def matches(found: str) -> bool:
        return pattern.fullmatch(found) is not None

    previous = previous_files(step.name, earlier)
    content = source.hash == "content"
    if (store := datastores.stores.get(source.datastore)) is not None:
        return await objects.partitions(store, relative, matches, over.per, previous, content=content)
    within = datastores.paths[source.datastore]
    return await data.partitions(path, matches, over.per, previous, content=content, within=within)


def _item_print(item: Any) -> str:
    return fingerprint({"item": msgspec.json.encode(item).decode()})


def link_reused(default_root: str, run_id: str, decisions: Mapping[str, Decision]) -> None:
    """Links each reused partition's outputs into the new run's output directories, so that steps
    downstream find every partition's part under ``runs/<run>/<step>/<output>`` (blocking: run in a
    thread). Links are relative, so agents that mount the datastore elsewhere follow them too."""
    for name, decision in decisions.items():
        if decision.partition is None or decision.origin is None:
            continue
        for output, target in decision.origin.outputs.items():
            link = os.path.join(default_root, output_path(run_id, name, output))
            os.makedirs(os.path.dirname(link), exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.symlink(os.path.relpath(target, os.path.dirname(link)), link)


async def copy_reused(store: S3Store, base: str, run_id: str, decisions: Mapping[str, Decision]) -> None:
    """:func:`link_reused` for an ``s3`` default, whose outputs were recorded as URIs under ``base``
    (its ``s3://bucket/prefix/``): an object store has no links, so each reused partition's published
    files are copied (inside the store) under the new run's output and published there with their
    manifest, as an agent publishes (``attempt`` 0: the daemon's copy).

    Raises:
        StoreError: a reused output is no longer published (deleted since reuse was decided).
        obstore.exceptions.BaseError: the store failed a request.
    """
    copying = asyncio.Semaphore(COPY_CONCURRENCY)

    async def copy(source: str, target: str, entry: ManifestFile) -> ManifestFile:
        async with copying:
            await obstore.copy_async(store, f"{source}/{entry.path}", f"{target}/{entry.path}")
            meta = await obstore.head_async(store, f"{target}/{entry.path}")
        return msgspec.structs.replace(entry, e_tag=meta["e_tag"])

    for name, decision in decisions.items():
        if decision.partition is None or decision.origin is None:
            continue
        for output, uri in decision.origin.outputs.items():
            source, target = uri.removeprefix(base), output_path(run_id, name, output)
            files = await published(store, source)
            if files is None:  # an empty manifest would publish the partition as holding nothing
                raise StoreError(f"reused output {uri} is no longer published")
            entries = await asyncio.gather(*(copy(source, target, entry) for entry in files.values()))
            manifest = Manifest(files=list(entries), attempt=0)
            await obstore.put_async(store, manifest_key(target), encode_manifest(manifest))


def fanned_only(steps: Sequence[StepSpec]) -> set[str]:
    """The datastore inputs (by :func:`key_of`) that only steps fanning out over their files read."""
    fanned: set[str] = set()
    other: set[str] = set()
    for step in steps:
        over = step.foreach.over if step.foreach is not None else None
        for name, source in step.inputs.items():
            if isinstance(source, FromDatastore):
                (fanned if isinstance(over, OverFiles) and over.input == name else other).add(key_of(source))
    return fanned - other


def fanned_decision(step: str, decisions: Mapping[str, Decision]) -> Decision:
    """A step that fans out is never reused whole: its decision says how its partitions went."""
    parts = [d for name, d in decisions.items() if d.partition is not None and step_of(name) == step]
    reused = sum(d.origin is not None for d in parts)
    explanation = {
        **decisions[step].explanation,
        "outcome": "executed" if reused < len(parts) or not parts else "reused",
        "reused_from": None,
        "partitions": {"total": len(parts), "reused": reused},
        "reason": f"fans out over {len(parts)} partitions: {reused} reused, {len(parts) - reused} to run",
    }
    return replace(decisions[step], origin=None, explanation=explanation)
