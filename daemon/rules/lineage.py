"""Lineage: what each step run reads, and which paths a question about a path covers (pure; no I/O).

A step run's inputs are recorded as it is written (``daemon.store.new_runs``): each with the
datastore, the path relative to the datastore's root (as the step's spec renders it for the run),
the fingerprint the step's own fingerprint took of it (``daemon.rules.step_fingerprints``: a
datastore input's data fingerprint, a partition's own files; an upstream output's is that step's
fingerprint and the output's name, which stands for the data it writes) and, for an upstream output,
the run, step and output that wrote it (the run a reused upstream step links its outputs from).

"Who read under P" covers the inputs at P, those below P at a path boundary (``data/a`` is not
under ``data/ab``), and those that read a directory holding P (a step that read ``data`` read
``data/a/x.csv`` too) — except partitions, which read only their own files of it.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass

from daemon.documents.names import LOGS
from daemon.documents.references import DEFAULT_DATASTORE
from daemon.documents.specs import FromDatastore, FromStep, OverFiles, StepSpec
from daemon.documents.template import TemplateError, render
from daemon.rules.partitions import Partition, name_of
from daemon.rules.rendering import RunContext, output_path


class BadPath(ValueError):
    """A path that cannot name anything in a datastore: absolute, with ``..``, or with a NUL."""


@dataclass(frozen=True, slots=True)
class StepInput:
    """One input of a step run, as recorded for lineage."""

    name: str
    datastore: str
    path: str
    """Relative to the datastore's root, normalised (:func:`clean_path`); ``""`` is the root."""
    fingerprint: str | None
    files: tuple[str, ...] | None = None
    """A partition over files: the files it read, relative to ``path``; None: all of ``path``."""
    from_run: str | None = None
    from_step: str | None = None
    from_output: str | None = None


def clean_path(raw: str) -> str:
    """``raw`` as a datastore-relative path: ``a//b/./c/`` → ``a/b/c``, ``.`` or ``""`` → ``""``.

    Raises:
        BadPath: ``raw`` is absolute, has a ``..`` part or a NUL: it would leave the datastore.
    """
    if raw.startswith("/"):
        raise BadPath(f"{raw!r} is absolute; give a path relative to the datastore")
    if "\0" in raw:
        raise BadPath("it contains a NUL character")
    if ".." in raw.split("/"):
        raise BadPath(f"{raw!r} has a '..' part; give a path inside the datastore")
    cleaned = posixpath.normpath(raw) if raw else ""
    return "" if cleaned == "." else cleaned


def below(path: str) -> tuple[str, str] | None:
    """The bounds ``[low, high)`` (in byte order, collation "C") of the paths strictly below
    ``path``: ``path/`` up to ``path0`` (``0`` follows ``/``), so ``data/ab`` is not below ``data/a``.
    None for the root, below which lies every other path."""
    if not path:
        return None
    return path + "/", path + "0"


def ancestors(path: str) -> list[str]:
    """The directories holding ``path``, the root (``""``) first: ``a/b/c`` → ``["", "a", "a/b"]``."""
    if not path:
        return []
    parts = path.split("/")
    return ["", *("/".join(parts[:end]) for end in range(1, len(parts)))]


_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_OUTPUT = re.compile(rf"runs/({_UUID})/([a-z0-9][a-z0-9-]*)/([^/]+)(?:/part-(\d{{5,}}))?(?:/.*)?")


@dataclass(frozen=True, slots=True)
class OutputOf:
    """Where a path of the ``default`` datastore lies in a run's outputs."""

    run_id: str
    step: str
    """The step run that writes it: a partition ``score[3]`` for ``…/part-00003``."""
    output: str


def output_of(datastore: str, path: str) -> OutputOf | None:
    """The step output holding ``path`` (a cleaned path), if it is one: ``runs/<run>/<step>/<output>``
    of the ``default`` datastore, or below it (a partition's ``part-NNNNN`` is its partition's)."""
    if datastore != DEFAULT_DATASTORE:
        return None
    match = _OUTPUT.fullmatch(path)
    if match is None or match[3] == LOGS:
        return None
    run_id, step, output, part = match.groups()
    return OutputOf(run_id, step if part is None else name_of(step, int(part)), output)


def step_inputs(
    run: RunContext,
    step: StepSpec,
    components: Mapping[str, str] | None,
    values: Mapping[str, str],
    partition: Partition | None = None,
) -> list[StepInput]:
    """The inputs of ``step`` (or of its ``partition``) in ``run``, with the fingerprints its
    ``components`` took of them; ``values``: the run's substitutions (:func:`run_values`). An input
    whose path cannot be rendered is left out (the step's reuse explanation says why)."""
    components = components or {}
    over = step.foreach.over if step.foreach is not None else None
    recorded = []
    for name, source in step.inputs.items():
        fingerprint = components.get(f"input {name}")
        if isinstance(source, FromStep):
            run_id, origin = run.reused.get(source.step, (run.id, source.step))
            path = output_path(run_id, origin, source.output)
            recorded.append(
                StepInput(name, DEFAULT_DATASTORE, path, fingerprint, None, run_id, origin, source.output)
            )
            continue
        assert isinstance(source, FromDatastore)
        try:
            path = clean_path(render(source.path, values))
        except (TemplateError, BadPath):
            continue
        files = None
        if partition is not None and isinstance(over, OverFiles) and over.input == name:
            files = tuple(partition.files)
        recorded.append(StepInput(name, source.datastore, path, fingerprint, files))
    return recorded
