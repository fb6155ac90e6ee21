"""Small helpers for the document tests: parse YAML text, or get the problems it has as strings."""

from __future__ import annotations

from textwrap import dedent

import pytest

from daemon.documents import Document, DocumentErrors, SourceText, parse_documents


def parse(text: str, file: str = "p.yaml") -> list[Document]:
    """The documents of ``text`` (dedented, so tests can indent it)."""
    return parse_documents([SourceText(file, dedent(text))])


def problems(text: str, file: str = "p.yaml") -> list[str]:
    """Each problem of ``text`` as the user sees it; fails the test when ``text`` is valid."""
    with pytest.raises(DocumentErrors) as caught:
        parse(text, file)
    return [str(problem) for problem in caught.value.problems]
