"""An attempt's output: every line into its log file (the complete log) and, batched, as ``LogLines``
on ``log_subject`` (best effort, for people following live).

Lines arrive on the loop's thread through ``line``; ``run`` flushes every ``FLUSH_INTERVAL_S`` (sooner
when a batch grows large) until ``close``, which writes what is left. File writes go to a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import IO

import structlog
from nats.aio.client import Client as NATS

from kit.nats import NatsErrors
from runners.lines import Stream
from runners.protocol import Assignment, LogLines, log_subject

log = structlog.get_logger(__name__)

FLUSH_INTERVAL_S = 0.2
FLUSH_LINES = 1000
MAX_MESSAGE_BYTES = 256 * 1024
NOTE_PREFIX = "[sluice] "


class AttemptLog:
    def __init__(self, nc: NATS | None, agent: str, assignment: Assignment) -> None:
        self._nc = nc
        self._attempt = assignment.attempt_id
        self._number = assignment.number
        self._subject = log_subject(agent, assignment.run_id, assignment.step)
        self._path = Path(assignment.log_path)
        self._file: IO[str] | None = None
        self._pending: list[tuple[Stream, str]] = []
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()  # one flush at a time keeps the file in order
        self._closed = False

    async def open(self) -> None:
        """Creates the log file (and its directories). Raises ``OSError``."""
        self._file = await asyncio.to_thread(_open, self._path)

    def line(self, stream: Stream, text: str) -> None:
        if self._closed:
            return
        self._pending.append((stream, text))
        if len(self._pending) >= FLUSH_LINES:
            self._wake.set()

    def note(self, text: str) -> None:
        """A line of the agent's own (why a step was stopped or could not start), marked as such."""
        self.line("stderr", NOTE_PREFIX + text)

    async def report(self, text: str) -> None:
        """A note of the agent's that goes out now (progress of a transfer before or after the step)."""
        self.note(text)
        await self.flush()

    async def run(self) -> None:
        """Flushes until ``close``."""
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL_S)
            self._wake.clear()
            await self.flush()

    async def close(self) -> None:
        """Flushes what is left and closes the file; later lines are dropped."""
        self._closed = True
        self._wake.set()
        await self.flush()
        if self._file is not None:
            file, self._file = self._file, None
            await asyncio.to_thread(file.close)

    async def flush(self) -> None:
        async with self._flushing:
            batch, self._pending = self._pending, []
            if batch:
                await self._flush(batch)

    async def _flush(self, batch: list[tuple[Stream, str]]) -> None:
        if self._file is not None:
            try:
                await asyncio.to_thread(_write, self._file, [text for _, text in batch])
            except OSError as exc:
                log.warning("log_write_failed", attempt=self._attempt, path=str(self._path), error=str(exc))
        await self._publish(batch)

    async def _publish(self, batch: list[tuple[Stream, str]]) -> None:
        if self._nc is None:
            return
        for stream, lines in _messages(batch):
            message = LogLines(attempt_id=self._attempt, number=self._number, stream=stream, lines=lines)
            try:
                await self._nc.publish(self._subject, message.encode())
            except NatsErrors as exc:  # live logs are best effort; the file has them all
                log.debug("log_publish_failed", attempt=self._attempt, error=str(exc))
                return


def _messages(batch: list[tuple[Stream, str]]) -> list[tuple[Stream, list[str]]]:
    """Consecutive lines of one stream into messages of at most ``MAX_MESSAGE_BYTES``, in order."""
    messages: list[tuple[Stream, list[str]]] = []
    size = 0
    for stream, text in batch:
        if not messages or messages[-1][0] != stream or size + len(text) > MAX_MESSAGE_BYTES:
            messages.append((stream, []))
            size = 0
        messages[-1][1].append(text)
        size += len(text) + 8
    return messages


def _open(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8", errors="replace")


def _write(file: IO[str], lines: list[str]) -> None:
    file.write("".join(f"{text}\n" for text in lines))
    file.flush()
