"""The container image (deploy/Dockerfile, built by deploy/build-image.sh): what is in it, and a daemon
and an agent from it completing a run against the test PostgreSQL and NATS.

The containers use the host's network (CI's engine has no bridge), so they reach the test servers on
loopback; an embedded PostgreSQL listens on a Unix socket only, which is bound into the daemon's
container at the same path. Their data dirs are the image's anonymous volumes and their shared datastore
a named one, all removed with them: nothing owned by the image's uid is left on the host.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest

from daemon.runtime.embedded import free_port
from tests.e2e.sluice import api_get, api_request, api_text, wait_for, wait_run
from tests.requirements import docker_engine, unavailable

pytestmark = pytest.mark.image

IMAGE = "sluice:latest"
UID = 10001
BUILD_TOOLS = ("gcc", "cc", "c++", "clang", "make", "/opt/sluice/bin/pip")
PIPELINE = """
kind: Pipeline
name: from-the-image
steps:
  - name: greet
    command: [python3, -c, "import os; print('hello from uid', os.getuid())"]
"""


@pytest.fixture(scope="module")
def docker_client() -> Iterator:
    """A client of the engine that has the image. Skips without either, or fails when
    SLUICE_REQUIRE_IMAGE=1 (CI, which builds the image with .ci/image.sh)."""
    import docker.errors

    client = docker_engine("SLUICE_REQUIRE_IMAGE", timeout=60)
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        client.close()
        unavailable(f"there is no image {IMAGE}: build it with deploy/build-image.sh", "SLUICE_REQUIRE_IMAGE")
    yield client
    client.close()


def run_in_image(client, *command: str, entrypoint: str | None = None) -> str:
    """The output of a container of the image that runs ``command`` without a network; removed after,
    with its data dir's volume (``containers.run(remove=True)`` would leave that behind)."""
    container = client.containers.create(IMAGE, list(command), entrypoint=entrypoint, network_mode="none")
    try:
        container.start()
        status = container.wait(timeout=60)["StatusCode"]
        output = container.logs().decode()
    finally:
        container.remove(force=True, v=True)
    assert status == 0, output
    return output


def test_the_image_runs_sluice_as_a_fixed_non_root_user_without_build_tools(docker_client) -> None:
    assert "Usage: sluice" in run_in_image(docker_client, "--help")
    tools = " ".join(BUILD_TOOLS)
    inside = run_in_image(
        docker_client, "-c", f"id -u; for t in {tools}; do command -v $t || echo no $t; done", entrypoint="sh"
    )
    assert inside.splitlines() == [str(UID), *(f"no {tool}" for tool in BUILD_TOOLS)]


@pytest.fixture
def containers(docker_client) -> Iterator[Callable[..., object]]:
    """Start detached containers of the image on the host's network, all with one volume for the
    default datastore (step logs and outputs, which daemons and agents share), on a read-only root as
    deploy/'s Compose file and Kubernetes manifests run them; removed at the end with their volumes."""
    from docker.types import Mount

    datastores = docker_client.volumes.create(f"sluice-test-{uuid.uuid4().hex[:8]}")
    shared = Mount(target="/var/lib/sluice/datastores", source=datastores.name, type="volume")
    started = []

    def start(*command: str, environment: dict[str, str], mounts: tuple = ()):
        container = docker_client.containers.run(
            IMAGE,
            list(command),
            name=f"sluice-test-{uuid.uuid4().hex[:8]}",
            environment=environment,
            mounts=[shared, *mounts],
            network_mode="host",
            read_only=True,
            tmpfs={"/tmp": ""},
            init=True,
            detach=True,
        )
        started.append(container)
        return container

    yield start
    for container in started:
        container.remove(force=True, v=True)
    datastores.remove(force=True)


def postgres_mounts(database_url: str) -> tuple:
    """The bind of the Unix socket that ``database_url`` names (at the same path), if it names one: a
    container can connect to the socket even where the host's socket dir is closed to it."""
    from docker.types import Mount

    query = urllib.parse.parse_qs(urllib.parse.urlsplit(database_url).query)
    socket_dir = query.get("host", [""])[0]
    if not socket_dir.startswith("/"):
        return ()
    port = query.get("port", [str(urllib.parse.urlsplit(database_url).port or 5432)])[0]
    socket = f"{socket_dir}/.s.PGSQL.{port}"
    return (Mount(target=socket, source=socket, type="bind"),)


@pytest.mark.timeout(240)  # containers on the vfs storage driver (CI's) take seconds to create each
def test_a_daemon_and_an_agent_from_the_image_complete_a_run(
    database_url: str, nats_url: str, containers
) -> None:  # containers last: they go before their database does
    port = free_port()
    token = secrets.token_urlsafe(24)
    client_env = {"SLUICE_API_URL": f"http://127.0.0.1:{port}", "SLUICE_API_TOKEN": token}
    daemon = containers(
        "daemon",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        environment={
            "SLUICE_DATABASE_URL": database_url,
            "SLUICE_NATS_URL": nats_url,
            "SLUICE_API_TOKEN": token,
        },
        mounts=postgres_mounts(database_url),
    )
    agent_name = f"image-{uuid.uuid4().hex[:8]}"
    agent = containers(
        "agent",
        "--name",
        agent_name,
        "--executor",
        "process",
        "--gpus",
        "0",
        environment={"SLUICE_NATS_URL": nats_url},
    )
    try:
        wait_for(lambda: ready(daemon, client_env), timeout=90, interval=0.5)
        wait_for(lambda: agent_listed(agent, agent_name, client_env), timeout=60, interval=0.5)
        applied = post("/apply", client_env, PIPELINE.encode(), "application/yaml")
        assert applied["items"][0]["name"] == "from-the-image"
        started = post("/pipelines/from-the-image/runs", client_env, b'{"params": {}}', "application/json")
        run_id = started["run_id"]

        run = wait_run(run_id, client_env, ("succeeded", "failed", "cancelled"), timeout=60)

        assert run["status"] == "succeeded", run
        assert run["steps"][0]["attempts"][0]["agent"] == agent_name
        logs = f"/runs/{run_id}/steps/greet/logs"
        wait_for(lambda: api_text(logs, client_env) == f"hello from uid {UID}\n", timeout=10, interval=0.2)
    except BaseException as failure:
        failure.add_note(f"daemon:\n{tail(daemon)}\nagent:\n{tail(agent)}")
        raise


def post(path: str, env: dict[str, str], body: bytes, content_type: str) -> dict:
    """POST ``body`` to ``/api/v1{path}`` with the token; the JSON answer."""
    request = api_request(path, env, data=body, method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def running(container, what: str) -> None:
    """Fails at once when ``container`` exited, rather than when a wait for it runs out."""
    container.reload()
    assert container.status != "exited", f"the {what} exited"


def ready(daemon, client_env: dict[str, str]) -> bool:
    """True once the daemon answers /readyz with 200."""
    running(daemon, "daemon")
    try:
        with urllib.request.urlopen(client_env["SLUICE_API_URL"] + "/readyz", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def agent_listed(agent, name: str, client_env: dict[str, str]) -> bool:
    running(agent, "agent")
    return any(
        item["name"] == name and item["status"] == "ready" for item in api_get("/agents", client_env)["items"]
    )


def tail(container, lines: int = 30) -> str:
    return container.logs(tail=lines).decode(errors="replace")
