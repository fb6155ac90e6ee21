"""``sluice apply``: reads Pipeline, Trigger and Datastore documents (files, a directory, stdin),
validates them all, snapshots and uploads the ``source`` directories the daemon lacks, then sends
them in one ``POST /apply`` and prints a line per document.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import msgspec

from daemon.cli import output
from daemon.cli.commands import api_client, convert, json_option
from daemon.cli.http import UPLOAD_TIMEOUT, ApiClient, ApiError, path
from daemon.documents import Document, SourceText, parse_documents
from daemon.documents.source import Snapshot, SourceError, snapshot_directory
from daemon.errors import BadRequest, Invalid

STDIN = "-"
STDIN_NAME = "<stdin>"
YAML_SUFFIXES = (".yaml", ".yml")


class Applied(msgspec.Struct):
    """What ``POST /apply`` did with one document."""

    kind: str
    name: str
    action: str
    version: int | None = None

    def line(self) -> str:
        """``pipeline/x published v2``, ``pipeline/x unchanged (v1)``, ``trigger/y created`` …"""
        ref = f"{self.kind.lower()}/{self.name}"
        if self.action == "published":
            return f"{ref} published v{self.version}"
        if self.action == "unchanged" and self.version is not None:
            return f"{ref} unchanged (v{self.version})"
        return f"{ref} {self.action}"


class AppliedAnswer(msgspec.Struct):
    items: list[Applied]


@click.command()
@click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, allow_dash=True),
    help="A YAML file, a directory of *.yaml/*.yml files, or - for stdin. Repeatable.",
)
@click.option(
    "--no-default", is_flag=True, help="Publish new pipeline versions without making them the default."
)
@json_option
@output.reports_errors
def apply(paths: tuple[str, ...], no_default: bool, as_json: bool) -> None:
    """Validate and apply Pipeline, Trigger and Datastore documents.

    Everything is validated before anything is applied; `source:` directories are snapshotted and
    uploaded first. Prints one line per document.
    """
    texts = [text for given in paths for text in _read(given)]
    documents = parse_documents(texts)
    if not documents:
        raise BadRequest(f"no documents in {', '.join(paths)}")
    snapshots = _snapshot_sources(documents)
    client = api_client()
    _upload_missing(client, snapshots)
    answer = client.request("POST", "/apply", json=_apply_body(texts, snapshots, make_default=not no_default))
    if as_json:
        output.print_json(answer)
        return
    for item in convert(answer, AppliedAnswer).items:
        click.echo(item.line())


def _read(given: str) -> list[SourceText]:
    """The texts ``-f`` names: stdin, one file, or a directory's YAML files (sorted, not recursive)."""
    if given == STDIN:
        return [SourceText(file=STDIN_NAME, text=sys.stdin.read())]
    location = Path(given)
    if not location.is_dir():
        return [SourceText(file=given, text=_read_file(location))]
    files = sorted(child for child in location.iterdir() if child.suffix in YAML_SUFFIXES and child.is_file())
    if not files:
        raise BadRequest(f"{given} holds no *.yaml or *.yml files")
    return [SourceText(file=str(file), text=_read_file(file)) for file in files]


def _read_file(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{file} is not UTF-8 text") from None
    except OSError as error:
        raise BadRequest(f"cannot read {file}: {error.strerror}") from None


def _snapshot_sources(documents: Sequence[Document]) -> list[tuple[Document, Snapshot]]:
    """A snapshot of the ``source`` directory of each Pipeline that has one.

    ``source`` is relative to the directory of its file (to the working directory for stdin).
    """
    snapshots = []
    for doc in documents:
        if doc.kind != "Pipeline" or not doc.spec.source:
            continue
        base = Path.cwd() if doc.file == STDIN_NAME else Path(doc.file).parent
        try:
            snapshots.append((doc, snapshot_directory(base / doc.spec.source)))
        except SourceError as error:
            problem = {"file": doc.file, "line": doc.line, "path": "source", "message": error.message}
            raise Invalid(error.message, details=[problem]) from None
    return snapshots


def _upload_missing(client: ApiClient, snapshots: Sequence[tuple[Document, Snapshot]]) -> None:
    """Upload each distinct snapshot the daemon does not have yet."""
    for doc, snapshot in {snapshot.digest: (doc, snapshot) for doc, snapshot in snapshots}.values():
        if not _has_source(client, snapshot.digest):
            _upload_source(client, snapshot, label=doc.spec.source)


def _has_source(client: ApiClient, digest: str) -> bool:
    try:
        client.request("HEAD", path("sources", digest))
    except ApiError as error:
        if error.status == 404:
            return False
        raise
    return True


def _upload_source(client: ApiClient, snapshot: Snapshot, *, label: str) -> None:
    archive = snapshot.archive
    with output.progress(f"uploading {label}", len(archive)) as on_sent:
        client.request(
            "PUT",
            path("sources", snapshot.digest),
            body=archive,
            headers={"Content-Type": "application/x-tar"},
            timeout=UPLOAD_TIMEOUT,
            on_sent=on_sent,
        )


def _apply_body(
    texts: Sequence[SourceText], snapshots: Sequence[tuple[Document, Snapshot]], *, make_default: bool
) -> dict[str, Any]:
    """The ``POST /apply`` request: the texts as read, and the digest of each (file, source) written."""
    digests = {(doc.file, doc.spec.source): snapshot.digest for doc, snapshot in snapshots}
    return {
        "documents": [{"file": text.file, "text": text.text} for text in texts],
        "sources": [
            {"file": file, "source": source, "digest": digest} for (file, source), digest in digests.items()
        ],
        "make_default": make_default,
    }
