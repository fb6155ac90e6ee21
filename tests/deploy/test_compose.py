"""deploy/compose.yaml: docker-compose takes it, it runs only what Sluice has, its three NATS servers
form one cluster under Sluice's trust, and it holds no secret."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml

from daemon.runtime.embedded import nats_server_binary
from tests.deploy.usage import DEPLOY, SLUICE, Usage, deploy_tool, unknown_to_sluice

COMPOSE = DEPLOY / "compose.yaml"
EXAMPLE_ENV = DEPLOY / "compose" / "example.env"
NATS_CONF = DEPLOY / "compose" / "nats.conf"
GPU_REQUEST = [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[?-][^}]*)?\}")


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def sluice_services(services: dict[str, dict]) -> dict[str, dict]:
    return {name: spec for name, spec in services.items() if "sluice" in spec["image"]}


def nats_services(services: dict[str, dict]) -> dict[str, dict]:
    return {name: spec for name, spec in services.items() if spec["image"].startswith("nats:")}


def test_docker_compose_validates_it() -> None:
    docker_compose = deploy_tool("docker-compose")
    result = subprocess.run(
        [docker_compose, "--env-file", EXAMPLE_ENV, "--file", COMPOSE, "--profile", "tools", "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)["services"]
    assert set(rendered) == set(yaml.safe_load(COMPOSE.read_text())["services"])


def test_every_command_flag_and_variable_exists_in_sluice(services: dict[str, dict]) -> None:
    usages = [
        Usage(f"compose service {name}", tuple(spec["command"]), frozenset(spec.get("environment", {})))
        for name, spec in sluice_services(services).items()
    ]

    assert [problem for usage in usages for problem in unknown_to_sluice(usage)] == []


def test_two_daemons_and_two_agents_one_on_the_gpus(services: dict[str, dict]) -> None:
    ours = sluice_services(services)
    daemons = {name: spec for name, spec in ours.items() if spec["command"][0] == "daemon"}
    agents = {name: spec for name, spec in ours.items() if spec["command"][0] == "agent"}

    assert len(daemons) == 2
    for spec in daemons.values():
        assert spec["environment"]["SLUICE_NATS_REPLICAS"] == "3"
        assert "/readyz" in " ".join(spec["healthcheck"]["test"])
    assert len(agents) == 2
    gpu = [spec for spec in agents.values() if "accelerator=gpu" in spec["command"]]
    assert len(gpu) == 1
    assert gpu[0]["deploy"]["resources"]["reservations"]["devices"] == GPU_REQUEST
    names = set()
    for spec in agents.values():
        (secret,) = spec["secrets"]
        assert spec["environment"]["SLUICE_NATS_CREDS"] == f"/run/secrets/{secret}"
        names.add(secret)
    assert len(names) == 2, "each agent has credentials of its own"
    assert all(spec["init"] is True for spec in agents.values()), "an init reaps what steps leave behind"


def test_the_three_nats_servers_route_to_each_other(services: dict[str, dict]) -> None:
    nats = nats_services(services)
    conf = NATS_CONF.read_text()
    routes = set(re.findall(r'"nats://([\w-]+):6222"', conf))

    assert len(nats) == 3
    assert routes == set(nats)
    assert {spec["environment"]["SERVER_NAME"] for spec in nats.values()} == set(nats)
    (include,) = re.findall(r'^include "([^"]+)"', conf, re.MULTILINE)
    for spec in nats.values():
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in spec["volumes"]}
        config = spec["command"][spec["command"].index("--config") + 1]
        assert mounts[config] == "./compose/nats.conf"
        assert mounts[str(Path(config).parent / include)] == "./credentials/nats-auth.conf"


def test_nats_server_takes_each_servers_configuration_with_the_trust_sluice_prints(
    services: dict[str, dict], tmp_path: Path
) -> None:
    """The configuration as the servers read it, including what `sluice credentials init` prints on
    stdout (as the compose service `trust` runs it, its log on stderr)."""
    trust = services["trust"]["command"]
    init = subprocess.run(
        [SLUICE, *trust, "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=90,
        env=os.environ | {"HOME": str(tmp_path), "SLUICE_LOG_FORMAT": "json"},
    )
    assert init.returncode == 0, init.stderr
    assert init.stdout.startswith("# Sluice's NATS trust")
    (tmp_path / "sluice-auth.conf").write_text(init.stdout)
    (tmp_path / "sluice.conf").write_text(NATS_CONF.read_text())

    for name in nats_services(services):
        checked = subprocess.run(
            [nats_server_binary(), "--config", "sluice.conf", "-t"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            env={"SERVER_NAME": name},
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_no_secret_is_written_in_it(services: dict[str, dict]) -> None:
    for name, spec in services.items():
        for variable, value in spec.get("environment", {}).items():
            where = f"{name}: {variable}"
            if re.search(r"TOKEN|PASSWORD|SECRET", variable):
                assert REFERENCE.fullmatch(value), f"{where} must be a ${{…}} reference"
            if variable.endswith("_URL"):
                for url in value.split(","):
                    password = urllib.parse.urlsplit(url).password
                    assert password is None or REFERENCE.fullmatch(password), f"{where} holds a password"
            if variable.endswith("_CREDS"):
                assert value.startswith("/run/secrets/"), f"{where} must be a mounted secret"


def test_example_env_gives_every_variable_the_file_requires() -> None:
    required = {name for name, rule in REFERENCE.findall(COMPOSE.read_text()) if rule.startswith(":?")}
    given = set(re.findall(r"^(\w+)=", EXAMPLE_ENV.read_text(), re.MULTILINE))

    assert required <= given


def test_the_documented_first_steps_name_its_services_and_files(services: dict[str, dict]) -> None:
    """README's steps and the file's own header: each service they run exists, and each file they
    write is one the file mounts."""
    readme = (DEPLOY.parent / "README.md").read_text().split("### With Docker Compose", 1)[1]
    steps = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    header = "\n".join(line for line in COMPOSE.read_text().splitlines() if line.startswith("#"))
    compose = yaml.safe_load(COMPOSE.read_text())
    mounted = {f"./{secret['file'].removeprefix('./')}" for secret in compose["secrets"].values()}
    mounted |= {volume.split(":")[0] for spec in services.values() for volume in spec.get("volumes", [])}

    for text in (steps, header):
        commands = [
            line.split("#")[0].split(">")[0].split() for line in re.findall(r"docker-compose (.+)", text)
        ]
        assert commands
        for words in commands:
            operands = [word for word in words[1:] if not word.startswith("-")]
            named = set(operands[:1]) if words[0] == "run" else set(operands)
            assert named <= set(services), words
        for written in re.findall(r"> (credentials/\S+)", text):
            assert f"./{written}" in mounted, written
