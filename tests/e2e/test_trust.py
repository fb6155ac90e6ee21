"""Trust on the bus, end to end with real `sluice` processes and real agents: the embedded NATS admits
no stranger, each credential does its job and nothing more, the exploits that once worked fail, and
a revoked agent is cut off while its step runs again elsewhere."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import nats
import nats.errors
import pytest

from daemon.runtime.embedded import EmbeddedNats, free_port, nats_server_binary, port_is_free
from runners.protocol import (
    Assignment,
    Capacity,
    Gpu,
    Heartbeat,
    Metric,
    Resources,
    StepFinished,
    agent_inbox,
)
from tests.e2e.sluice import (
    HELLO,
    WAIT_FOR_GATE,
    SluiceUp,
    api_get,
    apply,
    cli,
    get_run,
    start_run,
    steps_of,
    wait_for,
    wait_run,
    wait_step,
)

pytestmark = pytest.mark.e2e


ON_B = f"""
kind: Pipeline
name: on-b
params:
  gate: {{type: string}}
steps:
  - name: work
    command: [sh, -c, '{WAIT_FOR_GATE} && echo real && exit 3', sh, "${{params.gate}}"]
    selector: {{who: b}}
    retries: 0
"""
"""A step for agent b that fails (exit 3) once the test creates the file ``gate`` (a param)."""

GATED = f"""
kind: Pipeline
name: gated
params:
  gate: {{type: string}}
steps:
  - name: work
    command: [sh, -c, '{WAIT_FOR_GATE} && echo finished', sh, "${{params.gate}}"]
    resources: {{cpu: 1, memory: 64Mi}}
"""
"""A step that runs until the test creates the file ``gate`` (a param)."""


class Watched:
    """A NATS client as a test drives it, recording what the server refused it."""

    def __init__(self, nc: nats.NATS, refusals: list[str]) -> None:
        self.nc, self.refusals = nc, refusals

    @classmethod
    async def connect(cls, url: str, creds: str | Path, **options: object) -> Watched:
        refusals: list[str] = []

        async def on_error(exc: Exception) -> None:
            refusals.append(str(exc))

        nc = await nats.connect(
            url, user_credentials=str(creds), error_cb=on_error, allow_reconnect=False, **options
        )
        return cls(nc, refusals)

    async def refused(self, subject: str) -> bool:
        await self.nc.flush()
        await asyncio.sleep(0.05)
        return any(f'"{subject.lower()}"' in refusal for refusal in self.refusals)


def exploit(attempt_id: int, tmp_path: Path) -> bytes:
    """The assignment that once ran as the agent's user for anyone who reached NATS."""
    return Assignment(
        attempt_id=attempt_id,
        run_id="forged",
        pipeline="x",
        version=1,
        step="x",
        number=1,
        argv=["sh", "-c", f"id > {tmp_path / 'proof.txt'}"],
        env={},
        resources=Resources(cpu=0.1, memory=0),
        log_path=str(tmp_path / "overwritten.log"),
    ).encode()


EVIL_GPU = Heartbeat(
    executors=["process"],
    capacity=Capacity(cpu=64, memory=1 << 40, gpus=[Gpu(index=0, name="H100", memory=80 << 30)]),
    sent_at=time.time(),
).encode()
"""A heartbeat for an agent that does not exist, which once got the next GPU step's assignment."""


def forged_finish(attempt_id: int) -> bytes:
    """A `finished` event that once marked a running step succeeded, with a forged metric."""
    return StepFinished(
        attempt_id=attempt_id,
        status="succeeded",
        exit_code=0,
        metrics=[Metric(name="auc", value=0.99)],
        finished_at=time.time(),
    ).encode()


def test_the_embedded_nats_admits_no_stranger_and_local_services_submit_and_follow(
    sluice_up, tmp_path: Path
) -> None:
    sluice = sluice_up()
    env = sluice.client_env
    apply(HELLO, env)
    credentials = sluice.data_dir / "credentials"
    for path in (Path(sluice.service_creds), credentials / "agents" / "local.creds"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    async def scenario() -> tuple[dict, list[str]]:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(sluice.nats_url, allow_reconnect=False, connect_timeout=3)
        service = await Watched.connect(sluice.nats_url, sluice.service_creds)
        try:
            follow = await service.nc.subscribe("sluice.runs.hello.*")
            reply = await service.nc.request("sluice.submit.hello", b'{"params": {"who": "bus"}}', timeout=10)
            statuses = []
            while not statuses or statuses[-1] not in ("succeeded", "failed"):
                statuses.append(json.loads((await follow.next_msg(timeout=30)).data)["status"])
            # The exploits, with the local services' own credentials.
            await service.nc.publish("sluice.agents.local.assign", exploit(99, tmp_path))
            await service.nc.publish("sluice.agents.evil-gpu.heartbeat", EVIL_GPU)
            await service.nc.publish("sluice.steps.local.1.finished", forged_finish(1))
            for subject in (
                "sluice.agents.local.assign",
                "sluice.agents.evil-gpu.heartbeat",
                "sluice.steps.local.1.finished",
            ):
                assert await service.refused(subject), subject
            return json.loads(reply.data), statuses
        finally:
            await service.nc.close()

    reply, statuses = asyncio.run(scenario())

    assert "run_id" in reply, reply
    assert statuses[-1] == "succeeded"
    assert get_run(reply["run_id"], env)["status"] == "succeeded"
    time.sleep(0.5)
    assert not (tmp_path / "proof.txt").exists()
    assert [agent["name"] for agent in api_get("/agents", env)["items"]] == ["local"]


def test_an_agent_cannot_act_for_another_and_a_forged_result_changes_nothing(
    sluice_daemon: SluiceUp, sluice_agent, tmp_path: Path
) -> None:
    env = sluice_daemon.client_env
    gate = tmp_path / "gate"
    sluice_agent(sluice_daemon, "a", "--labels", "who=a")
    sluice_agent(sluice_daemon, "b", "--labels", "who=b")
    apply(ON_B, env)
    run_id = start_run("on-b", env, f"gate={gate}")
    step = wait_step(run_id, "work", env, "running")
    (attempt,) = step["attempts"]
    assert attempt["agent"] == "b"

    async def as_a() -> None:
        a = await Watched.connect(
            sluice_daemon.nats_url, sluice_daemon.creds("agent", "a"), inbox_prefix=agent_inbox("a")
        )
        try:
            await a.nc.subscribe("sluice.agents.b.assign")
            await a.nc.publish("sluice.agents.b.heartbeat", EVIL_GPU)
            await a.nc.publish(f"sluice.steps.b.{attempt['id']}.finished", forged_finish(attempt["id"]))
            for subject in (
                "sluice.agents.b.assign",
                "sluice.agents.b.heartbeat",
                f"sluice.steps.b.{attempt['id']}.finished",
            ):
                assert await a.refused(subject), subject
            # On its own subject the server lets it through; the daemon does not apply it.
            js = a.nc.jetstream()
            await js.publish(f"sluice.steps.a.{attempt['id']}.finished", forged_finish(attempt["id"]))
        finally:
            await a.nc.close()

    asyncio.run(as_a())
    wait_for(lambda: sluice_daemon.log_lines("step_event_refused"), timeout=10)
    # The daemon has dealt with the forged success, and the step cannot have finished by itself yet.
    assert get_run(run_id, env)["status"] == "running"

    gate.touch()
    run = wait_run(run_id, env, ("succeeded", "failed"), timeout=30)

    (work,) = run["steps"]
    assert run["status"] == "failed"
    assert (work["status"], work["metrics"]) == ("failed", [])
    assert [(item["agent"], item["exit_code"]) for item in work["attempts"]] == [("b", 3)]
    refused = sluice_daemon.log_lines("step_event_refused")
    assert refused
    assert refused[0]["source"] == "a"
    assert f"attempt {attempt['id']} is assigned to b" in refused[0]["reason"]


def test_an_agent_with_another_agents_credentials_is_told_at_start(sluice_daemon: SluiceUp, tmp_path) -> None:
    creds = sluice_daemon.creds("agent", "a")
    env = sluice_daemon.env | {"SLUICE_NATS_URL": sluice_daemon.nats_url}
    result = cli("agent", "--name", "b", "--creds", str(creds), "--cache-dir", str(tmp_path / "c"), env=env)
    assert result.returncode == 2
    assert "--name b: the credentials are agent a's" in result.stderr


def test_a_revoked_agent_is_cut_off_and_its_step_succeeds_on_another(
    sluice_daemon: SluiceUp, sluice_agent, tmp_path: Path
) -> None:
    env = sluice_daemon.client_env
    gate = tmp_path / "gate"
    doomed = sluice_agent(sluice_daemon, "doomed", "--cpus", "1", "--memory", "1Gi", "--gpus", "0")
    apply(GATED, env)
    run_id = start_run("gated", env, f"gate={gate}")
    wait_step(run_id, "work", env, "running")
    # However long the spare takes to join, the step is still running on doomed: it waits for the gate.
    sluice_agent(sluice_daemon, "spare", "--cpus", "1", "--memory", "1Gi", "--gpus", "0")

    revoked = cli("credentials", "revoke", "doomed", env=env)

    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == "doomed: revoked (1 key(s) newly revoked)"
    # The revocation reached NATS before the command returned: the agent is cut off at once, long
    # before the heartbeat timeout would have noticed anything.
    wait_for(lambda: doomed.process.poll() is not None, timeout=5)
    assert doomed.process.returncode == 1
    assert "NATS closed the agent's connection: nats: user authentication revoked" in doomed.log_tail()
    gate.touch()  # only now may the step finish, and doomed is gone: it can only succeed on spare
    run = wait_run(run_id, env, ("succeeded", "failed"), timeout=30)
    assert run["status"] == "succeeded"
    attempts = steps_of(run)["work"]["attempts"]
    assert [(item["agent"], item["status"]) for item in attempts] == [
        ("doomed", "lost"),
        ("spare", "succeeded"),
    ]
    listed = {item["name"]: item for item in cli_credentials(env)}
    assert listed["doomed"]["status"] == "revoked"
    again = cli(
        "agent",
        "--creds",
        str(sluice_daemon.creds("agent", "doomed")),
        "--cache-dir",
        "/tmp/unused",
        env=sluice_daemon.env | {"SLUICE_NATS_URL": sluice_daemon.nats_url},
    )
    assert again.returncode == 1
    assert "refused our credentials" in again.stderr


def cli_credentials(env: dict[str, str]) -> list[dict]:
    result = cli("credentials", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["items"]


README = Path(__file__).parents[2] / "README.md"


def readyz(env: dict[str, str]) -> dict:
    with urllib.request.urlopen(f"{env['SLUICE_API_URL']}/readyz", timeout=10) as response:
        return json.load(response)


def readme_nats_config(port: int) -> str:
    """The nats-server configuration README shows under ``<!-- nats-server.conf -->``, on ``port``."""
    text = README.read_text()
    block = text.split("<!-- nats-server.conf -->\n```\n", 1)[1].split("```", 1)[0]
    assert "port: 4222\n" in block
    return block.replace("port: 4222\n", f"port: {port}\n")


def tls_files(directory: Path) -> dict[str, str]:
    """A CA, the server's certificate (127.0.0.1, localhost) and a client certificate, made now."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(directory / "ca.pem")
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(directory / "server-cert.pem")
    server.private_key_pem.write_to_path(directory / "server-key.pem")
    client = ca.issue_cert("sluice-client")
    client.cert_chain_pems[0].write_to_path(directory / "client-cert.pem")
    client.private_key_pem.write_to_path(directory / "client-key.pem")
    return {
        "SLUICE_NATS_TLS_CA": str(directory / "ca.pem"),
        "SLUICE_NATS_TLS_CERT": str(directory / "client-cert.pem"),
        "SLUICE_NATS_TLS_KEY": str(directory / "client-key.pem"),
    }


@pytest.fixture
def nats_server(tmp_path: Path):
    """Start `nats-server -c nats-server.conf` in a directory; stopped at the end."""
    started: list[subprocess.Popen] = []

    def start(directory: Path, port: int) -> str:
        log = (directory / "nats-server.log").open("wb")
        process = subprocess.Popen(
            [nats_server_binary(), "-c", "nats-server.conf"], cwd=directory, stdout=log, stderr=log
        )
        started.append(process)
        wait_for(lambda: not port_is_free("127.0.0.1", port) or process.poll() is not None, timeout=15)
        assert process.poll() is None, (directory / "nats-server.log").read_text()
        return f"tls://127.0.0.1:{port}"

    yield start
    for process in started:
        process.terminate()
        process.wait(15)


def test_daemon_and_agents_over_tls_on_the_readme_nats_server(
    sluice_up, sluice_agent, nats_server, base_env: dict[str, str], tmp_path: Path
) -> None:
    data_dir, nats_dir = tmp_path / "data", tmp_path / "nats"
    nats_dir.mkdir()
    tls = tls_files(nats_dir)
    port = free_port()
    (nats_dir / "nats-server.conf").write_text(readme_nats_config(port))
    init = cli(
        "credentials",
        "init",
        "--data-dir",
        str(data_dir),
        "-o",
        str(nats_dir / "sluice-auth.conf"),
        "--resolver-dir",
        "./jwt",
        env=base_env,
    )
    assert init.returncode == 0, init.stderr
    url = nats_server(nats_dir, port)
    daemon = sluice_up("--agents", "0", data_dir=data_dir, env=base_env | tls | {"SLUICE_NATS_URL": url})
    env = daemon.client_env
    assert readyz(env) == {"status": "ready", "nats_auth": True}
    worker = sluice_agent(daemon, "worker", "--gpus", "0")  # with the daemon's TLS settings
    apply(HELLO, env)

    result = cli("run", "hello", "-p", "who=tls", "--wait", env=env, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.splitlines()[0].strip()
    assert steps_of(get_run(run_id, env))["greet"]["attempts"][0]["agent"] == "worker"
    revoked = cli("credentials", "revoke", "worker", env=env)
    assert revoked.returncode == 0, revoked.stderr
    wait_for(lambda: worker.process.poll() is not None, timeout=5)


def test_a_daemon_on_an_open_nats_warns_and_says_so(
    sluice_up, base_env: dict[str, str], tmp_path: Path
) -> None:
    server = EmbeddedNats(tmp_path / "open-nats")  # no trust: any client may do anything
    url = server.start()
    try:
        daemon = sluice_up(env=base_env | {"SLUICE_NATS_URL": url})
        env = daemon.client_env
        apply(HELLO, env)
        result = cli("run", "hello", "--wait", env=env, timeout=60)

        assert result.returncode == 0, result.stdout + result.stderr
        assert readyz(env)["nats_auth"] is False
        (warning,) = daemon.log_lines("nats_open")
        assert warning["level"] == "warning"
        assert "anyone who reaches NATS can run commands on the agents" in warning["problem"]
    finally:
        server.stop()
