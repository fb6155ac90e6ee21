"""Runs, their steps and attempts as the CLI reads them from the API (contract §4).

Unknown fields are ignored and missing optional ones take defaults, so the CLI keeps working while
the API grows; a missing required field is a bad answer (see ``commands.convert``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from daemon.cli import output
from daemon.cli.commands import Row

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
RUN_FINISHED = frozenset({"succeeded", "failed", "cancelled"})
STEP_FINISHED = frozenset({"succeeded", "failed", "reused", "skipped", "cancelled"})


def short_id(run_id: str) -> str:
    """The first block of a UUID (``3f2a9c1e``): enough to tell the runs of one table apart."""
    return run_id.split("-", 1)[0] if len(run_id) == 36 else run_id


class Attempt(msgspec.Struct):
    number: int
    status: str
    agent: str | None = None
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None

    def describe(self) -> str:
        """``attempt 2 on gpu-1, exit code 3`` (whichever parts it has)."""
        where = f"attempt {self.number}" + (f" on {self.agent}" if self.agent else "")
        return where if self.exit_code is None else f"{where}, exit code {self.exit_code}"

    def one_line_error(self) -> str:
        return " ".join(self.error.split()) if self.error else ""


class Metric(msgspec.Struct):
    name: str
    value: Any = None


class Reuse(msgspec.Struct):
    """Why a step was reused or executed (``outcome``: reused | executed | off)."""

    outcome: str
    reason: str = ""


class Origin(msgspec.Struct):
    """The step output an input came from."""

    run_id: str
    step: str
    output: str


class Input(msgspec.Struct):
    """What a step run read (lineage): where, and the fingerprint its own fingerprint took of it."""

    name: str
    datastore: str
    path: str
    fingerprint: str | None = None
    files: list[str] | None = None
    origin: Origin | None = msgspec.field(default=None, name="from")

    def where(self) -> str:
        """``landing:data/day1``, with a partition's file count: ``landing:data (3 files)``."""
        where = f"{self.datastore}:{self.path}"
        return where if self.files is None else f"{where} ({len(self.files)} files)"

    def source(self) -> str:
        """``step a of run 3f2a9c1e, output out``, or ``-`` for a datastore input."""
        if self.origin is None:
            return "-"
        return f"{self.origin.step}.{self.origin.output} of run {short_id(self.origin.run_id)}"


class Step(msgspec.Struct):
    name: str
    status: str
    reused: bool = False
    fingerprint: str | None = None
    reuse: Reuse | None = None
    outputs: dict[str, str] = {}
    metrics: list[Metric] = []
    waiting_reason: str | None = None
    warning: str | None = None
    attempts: list[Attempt] = []
    inputs: list[Input] = []

    @property
    def last_attempt(self) -> Attempt | None:
        return max(self.attempts, key=lambda attempt: attempt.number, default=None)


class Run(Row):
    """A run; as a row of ``sluice runs`` it shows a short id."""

    COLUMNS = ("ID", "PIPELINE", "VERSION", "STATUS", "TRIGGER", "CREATED", "DURATION")
    id: str
    pipeline: str
    version: int
    status: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    trigger: str | None = None
    event_id: int | str | None = None
    resolution: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    reason: str | None = None
    steps: list[Step] = msgspec.field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in RUN_FINISHED

    def duration(self) -> float | None:
        """Seconds from start to finish, or so far; None before it started."""
        return output.elapsed(self.started_at, self.finished_at)

    def cells(self) -> tuple[str, ...]:
        return (
            short_id(self.id),
            self.pipeline,
            str(self.version),
            self.status,
            self.trigger or "-",
            output.format_time(self.created_at),
            output.format_duration(self.duration()),
        )

    def failures(self) -> list[str]:
        """Why the run did not succeed: one line per failed step, or the run's status and reason."""
        lines = []
        for step in (step for step in self.steps if step.status == "failed"):
            attempt = step.last_attempt
            line = f"step {step.name} of run {self.id} failed"
            line += f" ({attempt.describe()})" if attempt else ""
            why = (attempt.one_line_error() if attempt else "") or step.waiting_reason
            lines.append(line + (f": {why}" if why else ""))
        return lines or [f"run {self.id} {self.status}" + (f": {self.reason}" if self.reason else "")]
