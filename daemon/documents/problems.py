"""Problems found in documents, and the error that carries them to the user."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from daemon.documents.paths import line_for
from daemon.errors import Invalid


class Problem(msgspec.Struct, frozen=True):
    """One thing wrong in one document: where (file, line, field path) and what."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.path:
            where = f"{where} {self.path}"
        return f"{where}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


class DocumentErrors(Invalid):
    """Documents that do not validate; ``problems`` holds every problem found, in document order."""

    def __init__(self, problems: list[Problem]) -> None:
        count = len(problems)
        message = str(problems[0]) if count == 1 else f"{count} problems in the documents"
        super().__init__(message, details=[problem.to_json() for problem in problems])
        self.problems = problems


class Reporter:
    """Collects the problems of one document, giving each the line of its path."""

    def __init__(self, file: str, lines: Mapping[str, int], line: int | None) -> None:
        self.file = file
        self.lines = lines
        self.line = line
        self.problems: list[Problem] = []
        self.dropped: list[str] = []

    def add(self, path: str, message: str) -> None:
        if any(
            path == dropped or path.startswith((f"{dropped}.", f"{dropped}[")) for dropped in self.dropped
        ):
            return
        self.problems.append(Problem(self.file, line_for(self.lines, path, self.line), path, message))

    def drop(self, path: str) -> None:
        """Report nothing more at ``path`` or below: it was bad and its value was left out."""
        self.dropped.append(path)
