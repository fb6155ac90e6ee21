"""The process executor on its own: real processes, no NATS."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from runners.executors import Job, Launch, StopRequest
from runners.executors.process import ProcessExecutor, step_environment
from runners.lines import LineSplitter, Stream
from runners.protocol import Resources

PYTHON = sys.executable


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[Stream, str]] = []

    def line(self, stream: Stream, text: str) -> None:
        self.lines.append((stream, text))

    def of(self, stream: Stream) -> list[str]:
        return [text for kind, text in self.lines if kind == stream]


def job(tmp_path: Path, argv: list[str], **fields: object) -> Job:
    values: dict[str, object] = {
        "attempt_id": 1,
        "run_id": "r",
        "step": "s",
        "number": 1,
        "argv": argv,
        "env": {},
        "work_dir": tmp_path,
        "resources": Resources(cpu=1, memory=0),
    }
    return Job(**(values | fields))


async def run(tmp_path: Path, argv: list[str], *, stop: StopRequest | None = None, **fields: object):
    sink, launches = Lines(), []
    outcome = await ProcessExecutor(grace_s=1.0).execute(
        job(tmp_path, argv, **fields), sink, stop or StopRequest(), launches.append
    )
    return outcome, sink, launches


async def test_the_environment_is_a_small_base_plus_the_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_SECRET", "do-not-leak")
    code = "import os, json; print(json.dumps(sorted(os.environ)))"

    outcome, sink, launches = await run(tmp_path, [PYTHON, "-c", code], env={"STEP_VAR": "1"})

    assert outcome.status == "succeeded"
    assert len(launches) == 1
    assert isinstance(launches[0], Launch)
    names = set(eval(sink.of("stdout")[0]))  # a JSON list of strings is a Python literal
    assert "AGENT_SECRET" not in names
    assert {"PATH", "STEP_VAR", "PYTHONUNBUFFERED"} <= names


async def test_a_step_sees_only_the_gpus_it_was_given(tmp_path: Path) -> None:
    code = "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'all'))"

    given, given_sink, _ = await run(tmp_path, [PYTHON, "-c", code], gpus=[1, 3])
    none, none_sink, _ = await run(tmp_path, [PYTHON, "-c", code])

    assert (given.status, none.status) == ("succeeded", "succeeded")
    assert given_sink.of("stdout") == ["1,3"]
    assert none_sink.of("stdout") == ["all"]  # a CPU step's environment is left as it was


def test_step_environment_takes_only_the_base_keys() -> None:
    env = step_environment(
        {"A": "1", "PYTHONUNBUFFERED": "0"}, base={"PATH": "/x", "HOME": "/h", "SECRET": "s"}
    )

    assert env == {"PATH": "/x", "HOME": "/h", "PYTHONUNBUFFERED": "0", "A": "1"}


async def test_the_step_runs_in_its_own_process_group_in_the_work_dir(tmp_path: Path) -> None:
    code = "import os; print(os.getpgid(0) == os.getpid(), os.getcwd())"

    outcome, sink, _ = await run(tmp_path, [PYTHON, "-c", code])

    assert outcome.status == "succeeded"
    assert sink.of("stdout") == [f"True {tmp_path}"]
    assert os.getpgid(0) != 0


async def test_a_step_killed_by_a_signal(tmp_path: Path) -> None:
    outcome, _, _ = await run(
        tmp_path, [PYTHON, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    )

    assert (outcome.status, outcome.exit_code, outcome.error) == ("failed", 137, "killed by signal SIGKILL")


async def test_a_background_child_holding_the_output_does_not_hold_the_step(tmp_path: Path) -> None:
    begun = time.monotonic()

    outcome, sink, _ = await run(tmp_path, ["sh", "-c", "sleep 300 & echo left it running"])

    assert outcome.status == "succeeded"
    assert sink.of("stdout") == ["left it running"]
    assert time.monotonic() - begun < 10


async def test_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")

    outcome, _, launches = await run(tmp_path, [str(script)])

    assert (outcome.status, outcome.exit_code, launches) == ("failed", None, [])
    assert outcome.error == f"cannot start {str(script)!r}: permission denied"


async def test_an_empty_command(tmp_path: Path) -> None:
    outcome, _, _ = await run(tmp_path, [])

    assert (outcome.status, outcome.error) == ("failed", "the step has an empty command")


async def test_a_stop_request_before_exit(tmp_path: Path) -> None:
    stop = StopRequest()
    stop.request("agent going away", status="failed")

    outcome, _, _ = await run(tmp_path, ["sleep", "300"], stop=stop)

    assert (outcome.status, outcome.error, outcome.exit_code) == ("failed", "agent going away", 143)


def test_lines_are_split_decoded_and_capped() -> None:
    splitter = LineSplitter(max_line=8)

    assert splitter.feed(b"one\r\ntw") == ["one"]
    assert splitter.feed(b"o\n\n\xff\n") == ["two", "", "\ufffd"]
    assert splitter.feed(b"0123456789abcdefXY") == ["01234567", "89abcdef"]
    assert splitter.close() == ["XY"]
    assert splitter.close() == []
