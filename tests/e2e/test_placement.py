"""Placement with real agents whose capacity is declared: GPU work on GPU agents, CPU work on CPU
agents while they have room, a step that fits nowhere waits and says why, and no agent ever runs
more than it offers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.sluice import api_text, apply, cli, get_run, start_run, steps_of, wait_for, wait_run

pytestmark = pytest.mark.e2e

GATED_STEP = """
  - name: {name}
    command: [sh, -c, 'echo "gpus=$(printenv CUDA_VISIBLE_DEVICES || echo none)"; i=0;
                        while [ ! -e "$1" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done',
              sh, "${{params.gate}}"]
    resources: {resources}
"""
RECORD_TIMES = (
    "import sys, time; s = time.time(); time.sleep(1.5); open(sys.argv[1], 'w').write(f'{s} {time.time()}')"
)
"""A step that takes 1.5 s and writes when it started and ended (epoch seconds) to the file argv[1]."""
TIMED_STEP = """
  - name: {name}
    command: [python3, -c, "{script}", "${{params.dir}}/{name}"]
    resources: {{cpu: 1, memory: 256Mi}}
"""


def gated(pipeline: str, steps: dict[str, str]) -> str:
    """A pipeline whose steps (name -> resources) all run until the file ``gate`` (a param) exists."""
    body = "".join(GATED_STEP.format(name=name, resources=need) for name, need in steps.items())
    return f"kind: Pipeline\nname: {pipeline}\nparams:\n  gate: {{type: string}}\nsteps:{body}"


def timed(pipeline: str, count: int) -> str:
    """``count`` independent cpu:1 steps that each record when they ran (epoch seconds) in a file."""
    steps = "".join(TIMED_STEP.format(name=f"s{i}", script=RECORD_TIMES) for i in range(count))
    return f"kind: Pipeline\nname: {pipeline}\nparams:\n  dir: {{type: string}}\nsteps:{steps}"


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals that overlap at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in edges:  # at a tie an end (-1) sorts first: touching intervals do not overlap
        running += change
        most = max(most, running)
    return most


@pytest.mark.timeout(120)
def test_steps_are_placed_by_resources_and_never_oversubscribe(
    sluice_daemon, sluice_agent, tmp_path: Path
) -> None:
    env = sluice_daemon.client_env
    agents = [
        sluice_agent(sluice_daemon, "cpu-box", "--cpus", "2", "--memory", "2Gi", "--gpus", "0", wait=False),
        sluice_agent(sluice_daemon, "gpu-box", "--cpus", "2", "--memory", "2Gi", "--gpus", "1", wait=False),
    ]
    for agent in agents:
        agent.wait_listed(env)
    apply(
        gated(
            "mixed",
            {
                "fit": "{cpu: 1, gpu: 1}",
                "prep-a": "{cpu: 1}",
                "prep-b": "{cpu: 1}",
                "prep-c": "{cpu: 1}",
            },
        )
        + "\n---\n"
        + gated("huge", {"train": "{cpu: 1, gpu: 2}"})
        + "\n---\n"
        + timed("many", 6),
        env,
    )

    # GPU work on the GPU agent; CPU work on the CPU agent while it has room, then wherever it fits.
    gate = tmp_path / "gate"
    mixed = start_run("mixed", env, f"gate={gate}")
    run = wait_for(
        lambda: (
            (run := get_run(mixed, env)) and all(step["status"] == "running" for step in run["steps"]) and run
        ),
        timeout=30,
    )
    placed = {name: step["attempts"][0] for name, step in steps_of(run).items()}
    assert (placed["fit"]["agent"], placed["fit"]["gpus"]) == ("gpu-box", [0])
    cpu_steps = [placed[name]["agent"] for name in ("prep-a", "prep-b", "prep-c")]
    assert sorted(cpu_steps) == ["cpu-box", "cpu-box", "gpu-box"]
    # A process step sees the GPUs it was given, and a CPU step none.
    wait_for(lambda: api_text(f"/runs/{mixed}/steps/fit/logs", env) == "gpus=0\n")
    wait_for(lambda: api_text(f"/runs/{mixed}/steps/prep-a/logs", env) == "gpus=none\n")

    # Two GPUs: no agent has them; the step waits and the run says why.
    huge = start_run("huge", env, f"gate={gate}")
    train = wait_for(lambda: steps_of(get_run(huge, env))["train"]["waiting_reason"], timeout=15)
    assert "2 GPUs" in train
    shown = cli("runs", "show", huge, env=env)
    assert train in shown.stdout
    gate.touch()
    assert wait_run(mixed, env, ("succeeded", "failed"))["status"] == "succeeded"
    run = get_run(huge, env)
    assert (run["status"], steps_of(run)["train"]["status"]) == ("queued", "ready")

    # Six one-CPU steps on four CPUs: each agent runs at most what it offers at once.
    many = start_run("many", env, f"dir={tmp_path}")
    run = wait_run(many, env, ("succeeded", "failed"), timeout=60)
    assert run["status"] == "succeeded"
    by_agent: dict[str, list[tuple[float, float]]] = {}
    for name, step in steps_of(run).items():
        start, end = map(float, (tmp_path / name).read_text().split())
        by_agent.setdefault(step["attempts"][0]["agent"], []).append((start, end))
    assert most_at_once(by_agent["cpu-box"]) == 2  # full, never over
    assert most_at_once(by_agent.get("gpu-box", [])) <= 2

    # An agent with two GPUs joins: the waiting step runs there.
    sluice_agent(sluice_daemon, "big-gpu-box", "--cpus", "1", "--memory", "1Gi", "--gpus", "2")
    run = wait_run(huge, env, ("succeeded", "failed"), timeout=30)
    assert run["status"] == "succeeded"
    attempt = steps_of(run)["train"]["attempts"][0]
    assert (attempt["agent"], attempt["gpus"]) == ("big-gpu-box", [0, 1])
    assert api_text(f"/runs/{huge}/steps/train/logs", env) == "gpus=0,1\n"
