"""The real `sluice agent` executable: it joins NATS, heartbeats what it was told it has, and stops
cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest

from runners.protocol import Capacity, Gpu, Heartbeat, heartbeat_subject

SLUICE = str(Path(sys.executable).parent / "sluice")
GiB = 1024**3


def agent_env(nats_url: str, tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLUICE_")}
    return env | {"SLUICE_NATS_URL": nats_url, "SLUICE_LOG_FORMAT": "json", "HOME": str(tmp_path / "home")}


async def test_sluice_agent_heartbeats_and_stops_on_sigterm(nats_url: str, tmp_path: Path) -> None:
    nc = await nats.connect(nats_url, connect_timeout=5)
    beats = await nc.subscribe(heartbeat_subject("cli-agent"))
    stderr = (tmp_path / "agent.log").open("w")
    process = await asyncio.create_subprocess_exec(
        SLUICE,
        "agent",
        "--name",
        "cli-agent",
        "--cpus",
        "2",
        "--memory",
        "1Gi",
        "--gpus",
        "1",
        "--labels",
        "zone=eu,tier=test",
        "--executor",
        "process",
        "--datastore",
        "landing=/data/landing",
        "--cache-dir",
        str(tmp_path / "cache"),
        env=agent_env(nats_url, tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=stderr,
        stderr=stderr,
    )
    try:
        async with asyncio.timeout(30):
            beat = Heartbeat.decode((await beats.next_msg(timeout=30)).data)
        process.send_signal(signal.SIGTERM)
        status = await asyncio.wait_for(process.wait(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        stderr.close()
        await nc.close()

    log = (tmp_path / "agent.log").read_text()
    assert status == 0, log
    assert beat.capacity == Capacity(cpu=2, memory=GiB, gpus=[Gpu(index=0, name="declared", memory=0)])
    assert beat.labels == {"zone": "eu", "tier": "test"}
    assert beat.datastores == {"landing": "/data/landing"}
    assert beat.executors == ["process"]
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert "agent_started" in events
    assert events[-1] == "agent_stopped"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--cpus", "0"], "--cpus"),
        (["--memory", "lots"], "--memory"),
        (["--gpus", "some"], "--gpus"),
        (["--labels", "zone"], "--labels"),
        (["--datastore", "landing"], "--datastore"),
        (["--name", "a.b"], "--name"),
        (["--executor", "vm"], "--executor"),
    ],
)
def test_bad_options_exit_2_naming_the_option(args: list[str], option: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [SLUICE, "agent", *args],
        env=agent_env("nats://127.0.0.1:1", tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert f"'{option}'" in result.stderr.strip().splitlines()[-1]


def test_sluice_agent_stops_cleanly_while_nats_is_away(tmp_path: Path) -> None:
    from daemon.runtime.embedded import EmbeddedNats

    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    log_path = tmp_path / "agent.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [SLUICE, "agent", "--name", "orphan", "--executor", "process", "--cache-dir", str(tmp_path)],
            env=agent_env(url, tmp_path),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 30
        while "agent_started" not in log_path.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.05)
        server.stop()  # the agent is now reconnecting, in vain
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        status = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        server.stop()

    log = log_path.read_text()
    assert status == 0, log
    assert "Traceback" not in log
    assert [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")][-1] == (
        "agent_stopped"
    )
