"""Drive real `sluice` processes as a user would: the executable, its output, its exit status."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SLUICE = str(Path(sys.executable).parent / "sluice")
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def cli(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess:
    """Run one `sluice` command to completion and return its result (text stdout/stderr, returncode)."""
    return subprocess.run(
        [SLUICE, *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout
    )


def cli_json(*args: str, env: dict[str, str]) -> dict:
    result = cli(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class SluiceUp:
    """A `sluice up` process on its own data dir and port."""

    def __init__(self, data_dir: Path, port: int, env: dict[str, str], *extra: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.env = env
        self.extra = extra
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.api_url = ""
        self.nats_url = ""

    def start(self) -> SluiceUp:
        self.output = []
        self.process = subprocess.Popen(
            [SLUICE, "up", "--data-dir", str(self.data_dir), "--port", str(self.port), *self.extra],
            env=self.env | {"SLUICE_LOG_FORMAT": "json"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        if not ready.wait(START_TIMEOUT_S) or not self.api_url:
            self.kill()
            raise AssertionError("sluice up did not become ready:\n" + "".join(self.output[-40:]))
        return self

    def _read(self, ready: threading.Event) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            if match := re.match(r"\s+API:\s+(\S+)", line):
                self.api_url = match.group(1)
            elif match := re.match(r"\s+NATS:\s+(\S+)", line):
                self.nats_url = match.group(1)
                ready.set()
        ready.set()

    def stop(self) -> int:
        """SIGTERM, then wait for a clean exit; returns the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(STOP_TIMEOUT_S)

    def kill(self) -> None:
        """kill -9: no clean-up at all, as after a crash."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    @property
    def client_env(self) -> dict[str, str]:
        return self.env | {"SLUICE_API_URL": self.api_url}


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
