"""Following one run to its end, for ``sluice run --wait``.

:class:`RunView` is the pure part: what is known of the run's steps, fed by run snapshots
(``GET /runs/{id}``) and by ``run``/``step`` events, each change reported as one line of text.
:class:`RunFollower` feeds it: it subscribes to ``GET /events?run=<id>`` first and reads a snapshot
second, so no change falls between them; when the stream breaks it reconnects a bounded number of
times (each reconnection re-reads the snapshot), then falls back to polling the snapshot.
:func:`steps_table` renders the view for a live terminal display.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable

import msgspec
from rich.table import Table
from rich.text import Text

from daemon.cli import output
from daemon.cli.commands import convert
from daemon.cli.http import ApiClient, ApiError, ApiUnreachable, BadAnswer, ServerSentEvent, path
from daemon.cli.records import RUN_FINISHED, STEP_FINISHED, Run, Step, short_id
from kit.backoff import backoff_s

# A daemon that sends a heartbeat comment every few seconds never trips this; without heartbeats a
# quiet stream is simply reopened (and the snapshot re-read) once a minute.
STREAM_IDLE_TIMEOUT = 60.0
STREAM_CONNECTS = 4
"""Stream connections in a row that may bring no event before the follower polls instead."""
RECONNECT_DELAY = 0.25
RECONNECT_DELAY_MAX = 2.0
POLL_INTERVAL = 0.5
POLL_OUTAGE = 30.0
"""How long polling tolerates an unreachable API before the wait fails."""

_STATUS_STYLES = {
    "succeeded": "green",
    "reused": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "running": "cyan",
    "dispatched": "cyan",
}


class StepEvent(msgspec.Struct):
    name: str
    status: str
    run_id: str | None = None
    attempt: int | None = None
    agent: str | None = None
    waiting_reason: str | None = None


class RunEvent(msgspec.Struct):
    id: str
    status: str


@dataclasses.dataclass
class StepState:
    """One step as the follower shows it; times are the attempt's, or when the follower saw them."""

    name: str
    status: str = "pending"
    attempt: int | None = None
    agent: str | None = None
    waiting_reason: str | None = None
    started: dt.datetime | None = None
    finished: dt.datetime | None = None

    def elapsed(self) -> float | None:
        return output.elapsed(self.started, self.finished)

    def key(self) -> tuple[object, ...]:
        """What a change is: a new status, attempt, agent or reason to wait."""
        return (self.status, self.attempt, self.agent, self.waiting_reason)

    def line(self) -> str:
        """``prep: running (attempt 1, agent cpu-1)``, ``score: ready (waiting: no agent has 2 GPUs)``."""
        notes = []
        if self.attempt:
            notes.append(f"attempt {self.attempt}")
        if self.agent:
            notes.append(f"agent {self.agent}")
        if self.status in STEP_FINISHED and self.started:
            notes.append(output.format_duration(self.elapsed()))
        if self.waiting_reason:
            notes.append(f"waiting: {self.waiting_reason}")
        return f"{self.name}: {self.status}" + (f" ({', '.join(notes)})" if notes else "")


class RunView:
    """What is known of one run. ``apply_*`` return the lines that describe what changed."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.status = "queued"
        self.title = f"run {run_id}"
        self.steps: dict[str, StepState] = {}

    @property
    def finished(self) -> bool:
        return self.status in RUN_FINISHED

    def apply_run(self, run: Run, now: dt.datetime) -> list[str]:
        """Take in a snapshot."""
        self.title = f"{run.pipeline} v{run.version} · run {short_id(run.id)}"
        lines = [line for step in run.steps if (line := self._apply_snapshot_step(step, now))]
        return lines + self._set_status(run.status)

    def apply_event(self, event: ServerSentEvent, now: dt.datetime) -> list[str]:
        """Take in one event of ``/events``; events of other runs and of unknown types are ignored."""
        if event.event == "run":
            run = convert(event.json(), RunEvent)
            return self._set_status(run.status) if run.id == self.run_id else []
        if event.event == "step":
            step = convert(event.json(), StepEvent)
            if step.run_id not in (None, self.run_id):
                return []
            line = self._update(step, now)
            return [line] if line else []
        return []

    def _set_status(self, status: str) -> list[str]:
        changed, self.status = status != self.status, status
        return [f"run {self.run_id}: {status}"] if changed else []

    def _apply_snapshot_step(self, step: Step, now: dt.datetime) -> str | None:
        attempt = step.last_attempt
        seen = StepEvent(
            name=step.name,
            status=step.status,
            attempt=attempt.number if attempt else None,
            agent=attempt.agent if attempt else None,
            waiting_reason=step.waiting_reason,
        )
        started = output.parse_time(attempt.started_at) if attempt else None
        if attempt is None or started is None:
            return self._update(seen, now)
        return self._update(seen, now, (started, output.parse_time(attempt.finished_at)))

    def _update(
        self, seen: StepEvent, now: dt.datetime, times: tuple[dt.datetime, dt.datetime | None] | None = None
    ) -> str | None:
        """Set one step's state, with its attempt's times when known; a line when anything changed."""
        state = self.steps.setdefault(seen.name, StepState(seen.name))
        before = state.key()
        if seen.attempt != state.attempt:
            state.started = state.finished = None
        state.status, state.attempt, state.agent = seen.status, seen.attempt, seen.agent
        state.waiting_reason = seen.waiting_reason
        if times:
            state.started, state.finished = times
        if seen.status in ("dispatched", "running") and state.started is None:
            state.started = now
        if seen.status in STEP_FINISHED and state.started is not None and state.finished is None:
            state.finished = now
        return state.line() if state.key() != before else None


def steps_table(view: RunView) -> Table:
    """The live display: one row per step with status, attempt, agent, elapsed time and why it waits."""
    table = Table(
        title=Text.assemble(view.title, " · ", _styled(view.status)),
        title_justify="left",
        box=None,
        pad_edge=False,
        header_style="bold",
        padding=(0, 3, 0, 0),
    )
    for column in ("STEP", "STATUS", "ATTEMPT", "AGENT", "ELAPSED", "WAITING"):
        table.add_column(column, no_wrap=column != "WAITING")
    for step in view.steps.values():
        table.add_row(
            step.name,
            _styled(step.status),
            str(step.attempt or "-"),
            step.agent or "-",
            output.format_duration(step.elapsed()),
            step.waiting_reason or "",
        )
    return table


def _styled(status: str) -> Text:
    return Text(status, style=_STATUS_STYLES.get(status, ""))


class RunFollower:
    """Keeps a :class:`RunView` current until its run finishes; ``on_change`` gets each batch of lines."""

    def __init__(self, client: ApiClient, view: RunView, on_change: Callable[[list[str]], None]) -> None:
        self._client = client
        self._view = view
        self._on_change = on_change
        self.answer: object = None
        """The latest snapshot as the API sent it."""

    def follow(self) -> Run:
        """Wait for the run to finish and return its final snapshot.

        Raises ApiError when the run cannot be read (e.g. 404), ApiUnreachable when the API stays
        unreachable for ``POLL_OUTAGE`` seconds once polling.
        """
        return self._stream() or self._poll()

    def _stream(self) -> Run | None:
        """Follow the event stream; None when it has to give up and leave the rest to polling."""
        fruitless = 0
        while fruitless < STREAM_CONNECTS:
            if fruitless:
                time.sleep(backoff_s(fruitless, base=RECONNECT_DELAY, cap=RECONNECT_DELAY_MAX))
            fruitless += 1
            try:
                events = self._client.stream(
                    "/events", query={"run": self._view.run_id}, idle_timeout=STREAM_IDLE_TIMEOUT
                )
            except ApiError:
                return None  # this daemon streams no events for the run
            except ApiUnreachable:
                continue
            try:
                with events:
                    run = self._refresh()
                    if run.finished:
                        return run
                    for event in events:
                        fruitless = 0
                        self._changed(self._view.apply_event(event, _now()))
                        if self._view.finished:
                            run = self._refresh()
                            return run if run.finished else None
            except (ApiUnreachable, BadAnswer):
                continue
        return None

    def _poll(self) -> Run:
        unreachable_since: float | None = None
        while True:
            try:
                run = self._refresh()
            except ApiUnreachable:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > POLL_OUTAGE:
                    raise
            else:
                if run.finished:
                    return run
                unreachable_since = None
            time.sleep(POLL_INTERVAL)

    def _refresh(self) -> Run:
        self.answer = self._client.request("GET", path("runs", self._view.run_id))
        run = convert(self.answer, Run)
        self._changed(self._view.apply_run(run, _now()))
        return run

    def _changed(self, lines: list[str]) -> None:
        if lines:
            self._on_change(lines)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
