"""The canonical JSON form of specs, and the digest that identifies a pipeline version."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import msgspec

from daemon.documents.specs import DatastoreSpec, Kind, PipelineSpec, Spec, TriggerSpec

_SPEC_TYPES: dict[str, type[Spec]] = {
    "Pipeline": PipelineSpec,
    "Trigger": TriggerSpec,
    "Datastore": DatastoreSpec,
}


def spec_to_json(spec: Spec) -> dict[str, Any]:
    """``spec`` as JSON-able builtins: every field present, sizes in bytes, durations in seconds,
    CPU in cores, step defaults merged into the steps, tagged unions carrying their tag (``from`` on
    step inputs, ``source`` on a trigger's ``on``), but for a step's ``foreach``, left out when the
    step has none, and a datastore input's ``mode`` when it is ``download``, so that versions
    published before ``foreach`` and ``mode`` existed keep their digests; and a files trigger's
    ``notifications`` when it has none, so that triggers applied before they existed stay unchanged.
    ``spec_from_json`` reads it back."""
    data = msgspec.to_builtins(spec)
    if isinstance(spec, PipelineSpec):
        for step in data["steps"]:
            if step["foreach"] is None:
                del step["foreach"]
            for source in step["inputs"].values():
                if source.get("mode") == "download":
                    del source["mode"]
    if isinstance(spec, TriggerSpec) and data["on"].get("notifications", False) is None:
        del data["on"]["notifications"]
    return data


def spec_from_json(kind: Kind, data: Mapping[str, Any]) -> Spec:
    """The spec of ``kind`` that ``spec_to_json`` gave ``data`` for; ``msgspec.ValidationError`` if
    ``data`` is not one."""
    return msgspec.convert(data, _SPEC_TYPES[kind], strict=True)


def version_digest(spec: PipelineSpec, source_digest: str | None) -> str:
    """``sha256:<hex>`` of the canonical JSON (sorted keys, no whitespace, UTF-8) of
    ``{"spec": <spec without source>, "source": source_digest}``. The source directory's name does
    not count, only its content (through ``source_digest``), so moving it keeps the version."""
    content = spec_to_json(spec)
    del content["source"]
    text = json.dumps(
        {"spec": content, "source": source_digest},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
