"""Drive real `sluice` processes as a user would: the executable, its output, its exit status."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from daemon.runtime.embedded import free_port

SLUICE = str(Path(sys.executable).parent / "sluice")
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0

FAST_TIMINGS = {
    "SLUICE_HEARTBEAT_TIMEOUT": "3",
    "SLUICE_UNLISTED_GRACE": "3",
    "SLUICE_RETRY_BACKOFF": "0.2",
    "SLUICE_SWEEP_INTERVAL": "0.5",
}
"""Daemon timings for tests: a silent agent is lost after 3 s, a retry follows 0.2 s after a failure."""


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

    COMMAND = "up"

    def __init__(self, data_dir: Path, port: int, env: dict[str, str], *extra: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.env = env
        self.extra = extra
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.api_url = ""
        self.nats_url = ""
        self.service_creds = ""
        """The credentials file `sluice up` wrote for local services (its NATS admits no stranger)."""
        self._creds: dict[str, Path] = {}

    def start(self) -> SluiceUp:
        self.output = []
        self.process = subprocess.Popen(
            [SLUICE, self.COMMAND, "--data-dir", str(self.data_dir), "--port", str(self.port), *self.extra],
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
            raise AssertionError(
                f"sluice {self.COMMAND} did not become ready:\n" + "".join(self.output[-40:])
            )
        return self

    def _read(self, ready: threading.Event) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            if match := re.match(r"\s+API:\s+(\S+)", line):
                self.api_url = match.group(1)
            elif match := re.match(r"\s+NATS:\s+(\S+)", line):
                self.nats_url = match.group(1)
            elif match := re.search(r"services connect with the credentials in (\S+)", line):
                self.service_creds = match.group(1)
            elif line.startswith("Stop with Ctrl-C."):
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
        """What a user's shell has to talk to this daemon: its URL, and its data dir (where the CLI
        finds the admin token `sluice up` made)."""
        return self.env | {"SLUICE_API_URL": self.api_url, "SLUICE_DATA_DIR": str(self.data_dir)}

    def creds(self, role: str, name: str, *grant: str) -> Path:
        """A credentials file minted by `sluice credentials ROLE NAME [grant options] -o FILE` (once
        per name), under the data dir's parent."""
        if name not in self._creds:
            path = self.data_dir.parent / "creds" / f"{role}-{name}.creds"
            result = cli("credentials", role, name, *grant, "-o", str(path), env=self.client_env)
            assert result.returncode == 0, result.stderr
            self._creds[name] = path
        return self._creds[name]

    def log_lines(self, event: str | None = None) -> list[dict]:
        """The JSON log lines it wrote so far (``SLUICE_LOG_FORMAT=json``), in order; only those
        whose ``event`` is ``event`` when given."""
        found = []
        for line in list(self.output):
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if event is None or record.get("event") == event:
                found.append(record)
        return found


class SluiceDaemon(SluiceUp):
    """A `sluice daemon` process: it announces nothing, and is ready once it logs ``daemon_ready``
    (with its API and NATS URLs). Its NATS is external: it writes no credentials files."""

    COMMAND = "daemon"

    def _read(self, ready: threading.Event) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            if '"daemon_ready"' in line:
                record = json.loads(line)
                self.api_url, self.nats_url = record["api_url"], record["nats_url"]
                ready.set()
        ready.set()


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user's shell (``HOME`` at ``home``), without any Sluice settings leaking
    in from ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    return env | {"HOME": str(home), "SLUICE_LOG_FORMAT": "json"}


@contextlib.contextmanager
def sluice_ups(directory: Path, base_env: dict[str, str]) -> Iterator[Callable[..., SluiceUp]]:
    """Start `sluice up` processes (``kind=SluiceDaemon``: `sluice daemon`; data dirs and logs under
    ``directory``); at the end stop them and anything they left running in their data dirs. The
    ``sluice_up`` fixtures wrap this, per test (e2e) or per module (browser)."""
    started: list[SluiceUp] = []

    def start(
        *extra: str,
        data_dir: Path | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        kind: type[SluiceUp] = SluiceUp,
    ) -> SluiceUp:
        process = kind(data_dir or directory / "data", port or free_port(), env or base_env, *extra)
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for number, process in enumerate(started, 1):
            try:
                if process.process.poll() is None:
                    process.stop()
            except subprocess.TimeoutExpired:
                process.kill()
            finally:
                (directory / f"up-{number}.log").write_text("".join(process.output))  # for the post-mortem
        data_dirs = {str(process.data_dir) for process in started}
        for leftover in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(leftover.info["cmdline"] or [])
            if any(data_dir in cmdline for data_dir in data_dirs):
                leftover.kill()


@contextlib.contextmanager
def sluice_agents(directory: Path) -> Iterator[Callable[..., SluiceAgent]]:
    """Start `sluice agent` processes joined to a daemon (cache dirs and logs under ``directory``); at
    the end stop them (before their daemons: enter this inside :func:`sluice_ups`), and kill whatever
    their steps left running (a step outlives an agent killed with -9)."""
    started: list[SluiceAgent] = []

    def start(
        daemon: SluiceUp, name: str, *extra: str, wait: bool = True, creds: Path | None = None
    ) -> SluiceAgent:
        """Start agent ``name`` joined to ``daemon`` (with the daemon's NATS settings, TLS included)
        with credentials of its own (``creds``, or minted now); with ``wait`` (default) until the
        daemon lists it."""
        agent = SluiceAgent(
            name,
            daemon.env | {"SLUICE_NATS_URL": daemon.nats_url},
            directory / "agents" / name,
            directory / f"agent-{name}.log",
            "--drain-timeout",
            "1",
            "--creds",
            str(creds or daemon.creds("agent", name)),
            *extra,
        )
        started.append(agent)
        return agent.start(daemon.client_env, wait=wait)

    try:
        yield start
    finally:
        for agent in started:
            agent.stop()
        cache_dirs = [agent.cache_dir for agent in started]
        for leftover in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if any(Path(leftover.cwd()).is_relative_to(cache_dir) for cache_dir in cache_dirs):
                    leftover.kill()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class SluiceAgent:
    """A `sluice agent` process joined to a daemon's NATS, with the capacity its arguments declare.

    Its output goes to ``log_path`` (read it when something went wrong: :meth:`log_tail`)."""

    def __init__(self, name: str, env: dict[str, str], cache_dir: Path, log_path: Path, *extra: str) -> None:
        self.name = name
        self.env = env
        self.cache_dir = cache_dir
        self.log_path = log_path
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, client_env: dict[str, str], *, wait: bool = True) -> SluiceAgent:
        """Start the agent and (unless not ``wait``) :meth:`wait_listed`."""
        argv = [SLUICE, "agent", "--name", self.name, "--cache-dir", str(self.cache_dir), *self.extra]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self.wait_listed(client_env) if wait else self

    def wait_listed(self, client_env: dict[str, str]) -> SluiceAgent:
        """Wait until the daemon lists the agent as ready (``client_env`` reaches the API)."""

        def listed() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"sluice agent {self.name} exited:\n{self.log_tail()}")
            agents = api_get("/agents", client_env)["items"]
            return any(agent["name"] == self.name and agent["status"] == "ready" for agent in agents)

        try:
            wait_for(listed, timeout=START_TIMEOUT_S, interval=0.2)
        except AssertionError:
            self.kill()
            raise
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """kill -9: the agent vanishes without a word, as when its machine dies."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM (the agent drains for its --drain-timeout), then a bounded wait; kill -9 past it."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-lines:])
        except OSError:
            return ""


def apply(text: str, env: dict[str, str]) -> None:
    """`sluice apply -f -` with ``text`` on stdin; it must succeed."""
    result = cli("apply", "-f", "-", stdin=text, env=env)
    assert result.returncode == 0, result.stderr


def start_run(pipeline: str, env: dict[str, str], *params: str) -> str:
    """`sluice run PIPELINE -p K=V …` (no wait); returns the run id."""
    result = cli("run", pipeline, *(arg for param in params for arg in ("-p", param)), env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def api_request(path: str, env: dict[str, str], **options) -> urllib.request.Request:
    """A request for ``/api/v1{path}`` on the daemon that ``env`` names, with its token (as the CLI
    finds it: SLUICE_API_TOKEN, else the data dir's admin token)."""
    token = (
        env.get("SLUICE_API_TOKEN") or Path(env["SLUICE_DATA_DIR"], "credentials", "api-token").read_text()
    )
    headers = {"Authorization": f"Bearer {token.strip()}"} | options.pop("headers", {})
    return urllib.request.Request(f"{env['SLUICE_API_URL']}/api/v1{path}", headers=headers, **options)


def api_get(path: str, env: dict[str, str]) -> dict:
    """GET ``/api/v1{path}`` from the daemon that ``env``'s SLUICE_API_URL names. Polls use this: a
    `sluice` command costs a second of interpreter start."""
    with urllib.request.urlopen(api_request(path, env), timeout=10) as response:
        return json.load(response)


def api_all(path: str, env: dict[str, str], limit: int = 500) -> list[dict]:
    """Every item of the paged list at ``/api/v1{path}``, following ``next_cursor``."""
    items: list[dict] = []
    cursor = None
    separator = "&" if "?" in path else "?"
    while True:
        query = f"{separator}limit={limit}" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        page = api_get(path + query, env)
        items.extend(page["items"])
        if not page["next_cursor"]:
            return items
        cursor = page["next_cursor"]


def api_text(path: str, env: dict[str, str]) -> str:
    """GET ``/api/v1{path}`` as text (a step's log)."""
    with urllib.request.urlopen(api_request(path, env), timeout=10) as response:
        return response.read().decode()


def show_run(run_id: str, env: dict[str, str]) -> dict:
    """`sluice runs show RUN_ID --json`."""
    return cli_json("runs", "show", run_id, env=env)


def get_run(run_id: str, env: dict[str, str]) -> dict:
    """The run as `GET /runs/{id}` has it (the same document as `runs show --json`)."""
    return api_get(f"/runs/{run_id}", env)


def steps_of(run: dict) -> dict[str, dict]:
    """A run's steps by name."""
    return {step["name"]: step for step in run["steps"]}


def wait_run(run_id: str, env: dict[str, str], statuses: tuple[str, ...], timeout: float = 30.0) -> dict:
    """Poll `sluice runs show` until the run reaches one of ``statuses``; returns the run."""

    def reached() -> dict | None:
        run = get_run(run_id, env)
        return run if run["status"] in statuses else None

    return wait_for(reached, timeout=timeout, interval=0.2)


def wait_step(run_id: str, step: str, env: dict[str, str], status: str, timeout: float = 30.0) -> dict:
    """Poll until ``step`` of the run has ``status``; returns the step."""

    def reached() -> dict | None:
        found = steps_of(get_run(run_id, env)).get(step)
        return found if found and found["status"] == status else None

    return wait_for(reached, timeout=timeout, interval=0.2)


def pid_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting for its parent counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Background:
    """One `sluice` command left running (``run --wait``, ``runs logs --follow``), its output read
    line by line as it comes."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [SLUICE, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float) -> int:
        """The exit status; AssertionError (with the output so far) when it runs past ``timeout``."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s:\n{self.output}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)


WAIT_FOR_GATE = 'i=0; while [ ! -e "$1" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; test -e "$1"'
"""Shell for a step that runs until the test creates the file its first argument names (failing if
that takes over 60 s): the test decides when the step may finish, so no step duration races whatever
the test does meanwhile on a loaded machine."""

FUZZ_CONFIG = Path(__file__).with_name("schemathesis.toml")
HELLO = """
kind: Pipeline
name: hello
params:
  who: {type: string, default: world}
  n: {type: integer, default: 1}
steps:
  - name: greet
    command: [echo, "hello ${params.who} ${params.n}"]
"""
"""A one-step pipeline for the tests that need one; the fuzzer's path parameters (FUZZ_CONFIG) name
it too."""


def fuzz(api_url: str, token: str, *, examples: int, phases: str = "coverage,fuzzing", timeout: float = 600):
    """Schemathesis over the daemon's ``/openapi.json``: every route, generated inputs, and the one
    check that no answer is a server error. The event stream is left out: it never ends."""
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(FUZZ_CONFIG),
            "run",
            f"{api_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(examples),
            "--phases",
            phases,
            "--exclude-path",
            "/api/v1/events",
            "--request-timeout",
            "10",
            "--generation-database",
            "none",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
