"""Real servers for the tests: PostgreSQL (embedded, or SLUICE_TEST_DATABASE_URL) and NATS with JetStream.

Each test gets a fresh database cloned from a template that the migrations were applied to once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from daemon.runtime.embedded import EmbeddedNats, EmbeddedPostgres
from tests.requirements import docker_engine, unavailable
from tests.s3 import MotoServer, S3Endpoint

TEMPLATE = "sluice_template"


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a maintenance database on a PostgreSQL server that the tests may create databases on."""
    if url := os.environ.get("SLUICE_TEST_DATABASE_URL"):
        yield url
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    server.start()
    yield server.dsn("postgres")
    server.stop()


def _database_url(admin_url: str, database: str) -> str:
    """``admin_url`` pointed at another database (the path, or the dbname query argument)."""
    base, _, query = admin_url.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{database}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
async def _template(pg_admin_url: str) -> str:
    from daemon.store import migrate

    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(_database_url(pg_admin_url, TEMPLATE))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return TEMPLATE


@pytest.fixture
async def database_url(pg_admin_url: str, _template: str) -> AsyncIterator[str]:
    """DSN of a fresh, migrated database for one test; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {_template}")
        yield _database_url(pg_admin_url, name)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    from daemon.store import create_pool

    pool = await create_pool(database_url)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a NATS server with JetStream, shared by the session (tests use their own names on it)."""
    server = EmbeddedNats(Path(tmp_path_factory.mktemp("nats")))
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """A real S3 HTTP endpoint (moto_server), shared by the session (tests make their own buckets)."""
    server = MotoServer(Path(tmp_path_factory.mktemp("s3")) / "moto.log")
    yield server.start()
    server.stop()


DOCKER_TEST_IMAGE = "sluice-test/busybox:1"


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The local busybox test image on a Docker engine that answers, imported if missing (no registry
    is reachable: it is made from the host's static busybox). Skips without an engine, or fails when
    SLUICE_REQUIRE_DOCKER=1 (CI, which starts one)."""
    import io
    import shutil
    import tarfile

    import docker.errors

    client = docker_engine("SLUICE_REQUIRE_DOCKER")
    try:
        client.images.get(DOCKER_TEST_IMAGE)
    except docker.errors.ImageNotFound:
        busybox = shutil.which("busybox")
        if busybox is None:
            unavailable(
                f"{DOCKER_TEST_IMAGE} is missing and there is no busybox to make it (busybox-static)",
                "SLUICE_REQUIRE_DOCKER",
            )
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(busybox, arcname="bin/busybox")
            link = tarfile.TarInfo("bin/sh")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        repository, tag = DOCKER_TEST_IMAGE.split(":")
        client.api.import_image_from_data(archive.getvalue(), repository=repository, tag=tag)
    finally:
        client.close()
    return DOCKER_TEST_IMAGE
