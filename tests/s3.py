"""A real S3 HTTP endpoint for the tests: ``moto_server`` (from ``moto[server]``) on a free loopback
port. It keeps everything in memory and takes any credentials; buckets are made with boto3."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from daemon.runtime.embedded import free_port
from kit.objectstore import S3Location

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")
REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class S3Endpoint:
    url: str
    access_key_id: str
    secret_access_key: str

    def env(self, prefix: str = "TEST_S3") -> dict[str, str]:
        """The credentials as environment variables ``<prefix>_KEY_ID`` and ``<prefix>_SECRET``."""
        return {f"{prefix}_KEY_ID": self.access_key_id, f"{prefix}_SECRET": self.secret_access_key}

    def location(self, bucket: str, prefix: str = "", env_prefix: str = "TEST_S3") -> S3Location:
        """A location whose credentials are the variables of :meth:`env`."""
        return S3Location(
            bucket=bucket,
            prefix=prefix,
            endpoint=self.url,
            region=REGION,
            path_style=True,
            access_key_id_env=f"{env_prefix}_KEY_ID",
            secret_access_key_env=f"{env_prefix}_SECRET",
        )

    def datastore_document(
        self, name: str, bucket: str, prefix: str = "", env_prefix: str = "TEST_S3"
    ) -> str:
        """The YAML of a Datastore ``name`` of type s3 at :meth:`location`, credentials named."""
        return (
            f"kind: Datastore\nname: {name}\ntype: s3\nbucket: {bucket}\nprefix: '{prefix}'\n"
            f"endpoint: {self.url}\nregion: {REGION}\npath_style: true\n"
            f"credentials: {{access_key_id_env: {env_prefix}_KEY_ID, "
            f"secret_access_key_env: {env_prefix}_SECRET}}\n"
        )

    def client(self):
        """A boto3 client of the endpoint (for what obstore cannot do: making buckets)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


class MotoServer:
    def __init__(self, log_file: Path) -> None:
        self.log_file = log_file
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> S3Endpoint:
        url = f"http://127.0.0.1:{self.port}"
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ | {"MOTO_ALLOW_NONEXISTENT_REGION": "true"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited: see {self.log_file}")
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                return S3Endpoint(url, "AKIASLUICETESTKEY", "sluice-test-secret-d6f1c0a4e2")
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"moto_server did not answer within {timeout} s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # one holding 100,000 objects may take longer to go
                self._process.kill()
                self._process.wait()
