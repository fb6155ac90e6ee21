"""YAML texts to validated documents: the entry point of this package."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from daemon.documents.convert import convert
from daemon.documents.datastore import build_datastore
from daemon.documents.loader import LoadedDocument, load_yaml
from daemon.documents.names import name_problem
from daemon.documents.pipeline import build_pipeline
from daemon.documents.problems import DocumentErrors, Problem, Reporter
from daemon.documents.raw import RawDatastore, RawPipeline, RawTrigger
from daemon.documents.specs import Document
from daemon.documents.trigger import build_trigger

API_VERSION = "sluice/v1"

_KINDS = {
    "Pipeline": (RawPipeline, build_pipeline),
    "Trigger": (RawTrigger, build_trigger),
    "Datastore": (RawDatastore, build_datastore),
}


class SourceText(msgspec.Struct, frozen=True):
    """The text of one YAML file, and the name to report it by (a path, ``-`` for stdin, …)."""

    file: str
    text: str


def parse_documents(texts: Iterable[SourceText]) -> list[Document]:
    """Every document in ``texts``, validated and normalised, in order.

    Raises ``DocumentErrors`` with every problem found in all texts (ordered by file, then line):
    YAML errors, structural errors (the first per document), semantic errors (all of them), and
    documents of the same kind and name given twice. References between documents and to what is
    already stored are checked apart, by ``check_references``.
    """
    documents: list[Document] = []
    problems: list[Problem] = []
    first: dict[tuple[str, str], Document] = {}
    for source in texts:
        loaded, file_problems = load_yaml(source.file, source.text)
        for item in loaded:
            report = Reporter(source.file, item.lines, item.line)
            document = _document(source.file, item, report)
            file_problems.extend(report.problems)
            if document is None:
                continue
            earlier = first.setdefault((document.kind, document.name), document)
            if earlier is not document:
                message = (
                    f"duplicate {document.kind} {document.name!r} (first at {earlier.file}:{earlier.line})"
                )
                file_problems.append(Problem(source.file, item.lines.get("name", item.line), "name", message))
            elif not report.problems:
                documents.append(document)
        problems.extend(sorted(file_problems, key=lambda problem: problem.line or 0))
    if problems:
        raise DocumentErrors(problems)
    return documents


def _document(file: str, item: LoadedDocument, report: Reporter) -> Document | None:
    """The document in ``item``, or None when its kind, name or structure is too broken to build one.
    A document is returned even when ``report`` got semantic problems about it."""
    if not isinstance(item.value, dict):
        report.add("", "a document must be a mapping with kind and name")
        return None
    body = dict(item.value)
    kind = body.pop("kind", None)
    name = body.pop("name", None)
    if body.pop("apiVersion", API_VERSION) != API_VERSION:
        report.add("apiVersion", f"must be {API_VERSION}")
    if not isinstance(kind, str) or kind not in _KINDS:
        shown = "missing" if kind is None else f"unknown kind {kind!r}"
        report.add("kind", f"{shown} (use {', '.join(_KINDS)})")
        kind = None
    if not isinstance(name, str):
        report.add("name", "missing" if name is None else "must be a string")
        name = None
    elif problem := name_problem(name):
        report.add("name", problem)
    if kind is None:
        return None
    raw_type, build = _KINDS[kind]
    raw = convert(body, raw_type, report)
    if raw is None or name is None:
        return None
    spec = build(name, raw, report)
    return Document(kind=kind, name=name, file=file, line=item.line, spec=spec, lines=item.lines)
