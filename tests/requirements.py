"""What a test needs from the machine (a Docker engine, an image, a browser): without it the test skips,
unless the environment says that this machine must have it (CI sets ``SLUICE_REQUIRE_…=1`` where it
installs the thing), and then the test fails."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str, required_by: str) -> NoReturn:
    """Skip for ``reason``, or fail where the environment variable ``required_by`` is 1."""
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{required_by}=1 but {reason}")
    pytest.skip(reason)


def docker_engine(required_by: str, timeout: int = 10):
    """A client of the Docker engine (``DOCKER_HOST`` or the default socket) once it answers a ping;
    :func:`unavailable` otherwise. ``timeout`` bounds each call the client makes."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        unavailable(f"no Docker engine answers: {exc}", required_by)
    return client
