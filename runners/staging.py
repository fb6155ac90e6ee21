"""Where an attempt's ``s3`` datastores are on this agent: a staging directory per step run.

The daemon renders the root of an ``s3`` datastore ``NAME`` for step ``S`` of run ``R`` on this agent
as ``<cache_dir>/staging/<R>/<S>/<NAME>`` (``Assignment.stores``); a local path under that root
stands for the same path under the store's prefix. This module checks such roots (pure), and maps
an attempt's inputs, outputs and log to the objects they stand for (:class:`Staging`), opening each
store with the credentials of the agent's environment.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from obstore.store import S3Store

from kit.objectstore import S3Location, open_store
from runners.protocol import Assignment, Upstream

STAGING = "staging"


def staging_dir(cache_dir: Path) -> Path:
    """The agent's staging directory (``Heartbeat.staging``)."""
    return cache_dir / STAGING


def step_staging(staging: Path, assignment: Assignment) -> Path:
    """The staging directory of the assignment's step run; only after ``misplaced_stores`` said None."""
    return staging / assignment.run_id / assignment.step


def misplaced_stores(assignment: Assignment, staging: Path) -> str | None:
    """Why the roots of the assignment's ``s3`` datastores are not where this agent stages them (see
    the module docstring), or None when they are. Pure: the paths as written."""
    if not assignment.stores:
        return None
    for part in (assignment.run_id, assignment.step):
        if part in ("", ".", "..") or "/" in part or "\0" in part:
            return f"run or step {part!r} cannot name a staging directory"
    for name in assignment.stores:
        expected = str(step_staging(staging, assignment) / name)
        root = assignment.datastores.get(name)
        if root is None:
            return f"s3 datastore {name} has no root"
        if posixpath.normpath(root) != expected:
            return f"s3 datastore {name} is staged at {expected} on this agent, not at {root}"
    return None


@dataclass(frozen=True, slots=True)
class Remote:
    """A local path of the attempt that stands for a path in an ``s3`` datastore."""

    what: str
    """``input raw``, ``output features``, ``log``: for messages."""
    datastore: str
    location: S3Location
    store: S3Store
    key: str
    """Relative to the store's prefix ('' for its root)."""
    path: Path
    within: Path
    """The step run's staging directory: an output uploaded from ``path`` may hold links to files
    in it (an input, say), never out of it (the step wrote them: ``/etc/shadow``, the agent's
    credentials)."""
    upstream: Upstream | None = None
    """For an input that is a step's output, the run, step and output that published it."""

    @property
    def uri(self) -> str:
        return self.location.uri(self.key)


@dataclass(frozen=True, slots=True)
class Staging:
    """An attempt's paths in ``s3`` datastores."""

    root: Path
    """The step run's staging directory: removed after the attempt."""
    inputs: list[Remote]
    outputs: list[Remote]
    log: Remote | None

    @classmethod
    def of(cls, assignment: Assignment, staging: Path) -> Staging:
        """Raises ``kit.objectstore.StoreError`` for a store that cannot be opened (a credential
        variable unset on this agent, named in the message)."""
        stores = {name: open_store(location) for name, location in assignment.stores.items()}
        within = step_staging(staging, assignment)

        def remote(what: str, path: str, upstream: Upstream | None = None) -> Remote | None:
            for name, store in stores.items():
                root = posixpath.normpath(assignment.datastores[name])
                normal = posixpath.normpath(path)
                if normal == root or normal.startswith(root + "/"):
                    key = normal[len(root) + 1 :]
                    location = assignment.stores[name]
                    return Remote(what, name, location, store, key, Path(normal), within, upstream)
            return None

        inputs = [
            remote(f"input {name}", path, assignment.upstream.get(name))
            for name, path in assignment.inputs.items()
        ]
        outputs = [remote(f"output {name}", path) for name, path in assignment.outputs.items()]
        return cls(
            root=within,
            inputs=[item for item in inputs if item is not None],
            outputs=[item for item in outputs if item is not None],
            log=remote("log", assignment.log_path),
        )
