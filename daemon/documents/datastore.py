"""Datastore documents: the raw YAML shape to a ``DatastoreSpec``."""

from __future__ import annotations

from pathlib import PurePosixPath

from daemon.documents.problems import Reporter
from daemon.documents.raw import RawDatastore
from daemon.documents.specs import DatastoreSpec


def build_datastore(name: str, raw: RawDatastore, report: Reporter) -> DatastoreSpec:
    """The spec of datastore ``name``; each problem found goes to ``report``."""
    if not PurePosixPath(raw.path).is_absolute():
        report.add("path", "must be an absolute path")
    return DatastoreSpec(name=name, type=raw.type, path=raw.path)
