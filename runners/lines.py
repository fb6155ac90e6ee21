"""Output bytes into text lines, and the sink that executors hand them to."""

from __future__ import annotations

from typing import Literal, Protocol

Stream = Literal["stdout", "stderr"]

MAX_LINE_BYTES = 64 * 1024
"""A longer line is cut into pieces of this size: one runaway line must not hold the whole log."""


class LineSink(Protocol):
    """Where an executor puts each output line of a step, in order, on the event loop's thread."""

    def line(self, stream: Stream, text: str) -> None: ...


class LineSplitter:
    """Feeds of arbitrary chunks in, complete lines out (without ``\\n`` or ``\\r\\n``), UTF-8 with
    undecodable bytes replaced. ``close`` returns a last line that had no newline, if any."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._max_line = max_line

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer.extend(chunk)
        lines = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                while len(self._buffer) >= self._max_line:
                    lines.append(_text(self._buffer[: self._max_line]))
                    del self._buffer[: self._max_line]
                return lines
            line = self._buffer[:end]
            del self._buffer[: end + 1]
            for start in range(0, max(len(line), 1), self._max_line):
                lines.append(_text(line[start : start + self._max_line]))

    def close(self) -> list[str]:
        rest, self._buffer = self._buffer, bytearray()
        return [_text(rest)] if rest else []


def _text(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("utf-8", "replace").removesuffix("\r")
