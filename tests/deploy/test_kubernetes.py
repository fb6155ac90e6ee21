"""deploy/kubernetes/: every manifest is valid Kubernetes (kubernetes-validate's schemas), the base
renders with kustomize, its containers run only what Sluice has, securely, with secrets from Secrets,
and the NATS chart's values give a JetStream cluster of three under Sluice's trust."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from daemon.config import DEFAULT_PORT
from tests.deploy.usage import DEPLOY, Usage, deploy_tool, unknown_to_sluice

BASE = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes the manifests are meant for (policy/v1, restricted Pod Security labels)."""
ALONE = ("trust-job.yaml",)
"""Manifests applied once by hand, outside the base."""
SECRET_VARIABLES = ("SLUICE_API_TOKEN", "SLUICE_DATABASE_URL")
WORKLOADS = ("Deployment", "DaemonSet", "Job")


def kustomizations() -> list[Path]:
    """Every kustomization under the base, the base's own first."""
    found, pending = [], [BASE]
    while pending:
        directory = pending.pop(0)
        found.append(directory)
        resources = yaml.safe_load((directory / "kustomization.yaml").read_text()).get("resources", [])
        pending += [directory / name for name in resources if (directory / name).is_dir()]
    return found


def generators(kind: str) -> list[dict]:
    return [
        generator
        for directory in kustomizations()
        for generator in yaml.safe_load((directory / "kustomization.yaml").read_text()).get(kind, [])
    ]


def manifests() -> list[tuple[str, dict]]:
    """(file, object) for every object of the base's resource files and of the files applied alone."""
    files = [
        directory / name
        for directory in kustomizations()
        for name in yaml.safe_load((directory / "kustomization.yaml").read_text()).get("resources", [])
        if (directory / name).is_file()
    ]
    files += [BASE / name for name in ALONE]
    return [
        (str(path.relative_to(DEPLOY)), document)
        for path in files
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def workloads() -> list[tuple[str, dict]]:
    return [
        (f"{where}: {obj['kind']} {obj['metadata']['name']}", obj)
        for where, obj in manifests()
        if obj["kind"] in WORKLOADS
    ]


def pod(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def config_map_keys() -> dict[str, set[str]]:
    """The variables each generated ConfigMap holds (``literals`` are KEY=VALUE)."""
    return {
        generator["name"]: {literal.split("=", 1)[0] for literal in generator.get("literals", [])}
        for generator in generators("configMapGenerator")
    }


def container_env(container: dict, config_maps: dict[str, set[str]]) -> set[str]:
    names = {variable["name"] for variable in container.get("env", [])}
    for source in container.get("envFrom", []):
        names |= config_maps[source["configMapRef"]["name"]]
    return names


@pytest.mark.parametrize(
    ("where", "obj"), manifests(), ids=lambda value: value if isinstance(value, str) else ""
)
def test_every_manifest_is_valid_kubernetes(where: str, obj: dict) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_base_renders_with_kustomize_into_valid_kubernetes(tmp_path: Path) -> None:
    kubectl = deploy_tool("kustomize", "kubectl")
    base = tmp_path / "kubernetes"
    shutil.copytree(BASE, base, ignore=shutil.ignore_patterns("secrets"))
    for directory in kustomizations():
        for generator in generators_of(directory):
            for entry in generator.get("files", []):
                placeholder = base / directory.relative_to(BASE) / entry.split("=", 1)[-1]
                placeholder.parent.mkdir(parents=True, exist_ok=True)
                placeholder.write_text("placeholder\n")
    command = [kubectl, "build", base] if kubectl.endswith("kustomize") else [kubectl, "kustomize", base]

    result = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    rendered = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    for obj in rendered:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in rendered}
    assert ("ConfigMap", "sluice-nats-trust") in names, "the NATS chart mounts it by this name"
    assert all(obj["metadata"].get("namespace", "sluice") == "sluice" for obj in rendered)


def generators_of(directory: Path) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return kustomization.get("secretGenerator", []) + kustomization.get("configMapGenerator", [])


def test_every_command_flag_and_variable_exists_in_sluice() -> None:
    config_maps = config_map_keys()
    usages = [
        Usage(
            f"{where} container {container['name']}",
            tuple(container["args"]),
            frozenset(container_env(container, config_maps)),
        )
        for where, obj in workloads()
        for container in pod(obj)["containers"]
        if container["image"].split(":")[0] == "sluice"
    ]

    assert len(usages) == 4
    assert [problem for usage in usages for problem in unknown_to_sluice(usage)] == []


def test_two_daemons_probed_on_readyz_and_healthz() -> None:
    ((_, deployment),) = [(where, obj) for where, obj in workloads() if obj["kind"] == "Deployment"]
    (container,) = pod(deployment)["containers"]
    (port,) = container["ports"]

    assert deployment["spec"]["replicas"] == 2
    assert container["args"][0] == "daemon"
    assert port["containerPort"] == DEFAULT_PORT
    assert str(DEFAULT_PORT) == container["args"][container["args"].index("--port") + 1]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert (
        "SLUICE_NATS_REPLICAS=3"
        in next(g for g in generators("configMapGenerator") if g["name"] == "sluice-daemon-env")["literals"]
    )


def test_agents_on_gpu_nodes_and_on_cpu_nodes() -> None:
    daemon_sets = {obj["metadata"]["name"]: obj for _, obj in workloads() if obj["kind"] == "DaemonSet"}
    gpu, cpu = daemon_sets["sluice-agent-gpu"], daemon_sets["sluice-agent-cpu"]
    (gpu_agent,), (cpu_agent,) = pod(gpu)["containers"], pod(cpu)["containers"]

    assert pod(gpu)["nodeSelector"] == {"accelerator": "gpu"}
    assert gpu_agent["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert gpu_agent["args"][gpu_agent["args"].index("--labels") + 1] == "accelerator=gpu"
    assert pod(cpu)["nodeSelector"] != pod(gpu)["nodeSelector"]
    assert "nvidia.com/gpu" not in cpu_agent["resources"].get("limits", {})
    assert cpu_agent["args"][cpu_agent["args"].index("--gpus") + 1] == "0"
    for agents in (gpu, cpu):  # PID 1 is the pause process, which reaps what steps leave behind
        assert pod(agents)["shareProcessNamespace"] is True


def test_pods_run_as_non_root_without_privileges_on_a_read_only_root() -> None:
    for where, obj in workloads():
        assert pod(obj)["securityContext"]["runAsNonRoot"] is True, where
        assert pod(obj)["automountServiceAccountToken"] is False, where
        for container in pod(obj)["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where


def test_secrets_come_from_secrets_that_are_generated_or_made_by_the_postgresql_operator() -> None:
    generated = {generator["name"] for generator in generators("secretGenerator")}
    cluster = yaml.safe_load((BASE / "postgres-cluster.yaml").read_text())
    operator_made = {f"{cluster['metadata']['name']}-app"}

    assert not [where for where, obj in manifests() if obj["kind"] == "Secret"], "secrets are generated"
    for where, obj in workloads():
        for container in pod(obj)["containers"]:
            for variable in container.get("env", []):
                if variable["name"] in SECRET_VARIABLES:
                    reference = variable["valueFrom"]["secretKeyRef"]["name"]
                    assert reference in generated | operator_made, f"{where}: {variable['name']}"
        for volume in pod(obj).get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in generated, where


def test_nats_values_make_a_jetstream_cluster_of_three_under_sluices_trust() -> None:
    values = yaml.safe_load((BASE / "nats-values.yaml").read_text())
    (job,) = [obj for _, obj in manifests() if obj["kind"] == "Job"]
    (trust,) = pod(job)["containers"]
    resolver_dir = trust["args"][trust["args"].index("--resolver-dir") + 1]
    (mount,) = [patch["value"] for patch in values["container"]["patch"]]
    (volume,) = [patch["value"] for patch in values["podTemplate"]["patch"]]
    (include,) = values["config"]["merge"].values()

    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["jetstream"]["fileStore"]["enabled"] is True
    assert resolver_dir.startswith(values["config"]["jetstream"]["fileStore"]["dir"] + "/")
    assert values["config"]["resolver"]["enabled"] is False, "the trust brings its own resolver"
    assert volume["name"] == mount["name"]
    assert str((Path("/etc/nats-config") / include).resolve()) == f"{mount['mountPath']}/sluice-auth.conf"
    trust_map = next(g for g in generators("configMapGenerator") if g["name"] == volume["configMap"]["name"])
    assert trust_map["options"]["disableNameSuffixHash"] is True
    assert [entry.split("=")[0] for entry in trust_map["files"]] == ["sluice-auth.conf"]
