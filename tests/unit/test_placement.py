"""Placement of a step on the agents' free capacity, without I/O."""

from __future__ import annotations

from dataclasses import replace

from daemon.rules.placement import AgentRoom, Need, Placed, Waiting, format_size, place
from runners.protocol import Gpu

GiB = 1024**3


def room(
    name: str,
    *,
    cpu: float = 4,
    memory: int = 8 * GiB,
    gpus: list[Gpu] | None = None,
    free_cpu: float | None = None,
    free_memory: int | None = None,
    free_gpus: list[Gpu] | None = None,
    labels: dict[str, str] | None = None,
    executors: tuple[str, ...] = ("process",),
) -> AgentRoom:
    gpus = gpus or []
    return AgentRoom(
        id=name,
        name=name,
        labels=labels or {},
        executors=executors,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        free_cpu=cpu if free_cpu is None else free_cpu,
        free_memory=memory if free_memory is None else free_memory,
        free_gpus=gpus if free_gpus is None else free_gpus,
    )


T4 = [Gpu(index=0, name="T4", memory=16 * GiB)]
TWO = [Gpu(index=0, name="A100", memory=80 * GiB), Gpu(index=1, name="T4", memory=16 * GiB)]


def test_cpu_steps_prefer_agents_without_gpus() -> None:
    agents = [room("gpu", cpu=64, gpus=T4), room("cpu", cpu=2)]
    assert place(Need(cpu=1, memory=0), agents) == Placed("cpu")
    # The CPU agent is full: the GPU agent takes it.
    agents[1] = room("cpu", cpu=2, free_cpu=0.5)
    assert place(Need(cpu=1, memory=0), agents) == Placed("gpu")


def test_best_fit_leaves_the_least_over() -> None:
    agents = [room("big", cpu=16, free_cpu=16), room("snug", cpu=16, free_cpu=2)]
    assert place(Need(cpu=2, memory=0), agents) == Placed("snug")


def test_gpu_steps_only_on_gpu_agents_with_specific_indices() -> None:
    agents = [room("cpu", cpu=64), room("gpu", gpus=TWO)]
    assert place(Need(cpu=1, memory=0, gpu=1), agents) == Placed("gpu", (1,))  # smallest adequate GPU
    assert place(Need(cpu=1, memory=0, gpu=1, gpu_memory=40 * GiB), agents) == Placed("gpu", (0,))
    assert place(Need(cpu=1, memory=0, gpu=2), agents) == Placed("gpu", (0, 1))


def test_never_oversubscribes() -> None:
    agents = [room("a", cpu=4, free_cpu=1, memory=8 * GiB, free_memory=GiB)]
    result = place(Need(cpu=2, memory=0), agents)
    assert result == Waiting("no agent has 2 free CPUs (most: a with 1)")
    result = place(Need(cpu=1, memory=2 * GiB), agents)
    assert result == Waiting("no agent has 2Gi free memory (most: a with 1Gi)")


def test_gpus_busy_now_says_which_agent_has_most() -> None:
    agents = [room("gpu-1", gpus=TWO, free_gpus=TWO[1:]), room("gpu-2", gpus=T4, free_gpus=[])]
    assert place(Need(cpu=1, memory=0, gpu=2), agents) == Waiting(
        "no agent has 2 free GPUs (largest: gpu-1 with 1)"
    )


def test_bigger_than_any_agent_is_reported_as_such() -> None:
    agents = [room("gpu-1", gpus=T4), room("gpu-2", gpus=T4)]
    assert place(Need(cpu=1, memory=0, gpu=2), agents) == Waiting(
        "needs 2 GPUs; no agent has more than 1", never_fits=True
    )
    assert place(Need(cpu=1, memory=0, gpu=1, gpu_memory=40 * GiB), agents) == Waiting(
        "needs 1 GPU with 40Gi memory each; no agent has more than 0 such GPUs", never_fits=True
    )
    assert place(Need(cpu=32, memory=0), agents).never_fits
    assert place(Need(cpu=1, memory=64 * GiB), agents) == Waiting(
        "needs 64Gi memory; no agent has more than 8Gi", never_fits=True
    )


def test_selector_and_executor_must_match() -> None:
    agents = [
        room("eu", labels={"zone": "eu"}),
        room("us", labels={"zone": "us"}, executors=("process", "docker")),
    ]
    assert place(Need(cpu=1, memory=0, selector={"zone": "us"}), agents) == Placed("us")
    assert place(Need(cpu=1, memory=0, selector={"zone": "ap"}), agents) == Waiting(
        "no agent has labels zone=ap"
    )
    assert place(Need(cpu=1, memory=0, executor="docker", selector={"zone": "eu"}), agents) == Waiting(
        "no matching agent has the docker executor"
    )
    assert place(Need(cpu=1, memory=0), []) == Waiting("no agent is connected")


def test_sizes_read_as_written() -> None:
    assert format_size(16 * GiB) == "16Gi"
    assert format_size(1536 * 1024**2) == "1.5Gi"
    assert format_size(512 * 1024**2) == "512Mi"


def test_a_step_on_an_s3_datastore_goes_only_to_agents_with_a_staging_directory() -> None:
    bare, staged = room("bare", cpu=2), replace(room("staged", cpu=64), staging=True)
    need = Need(cpu=1, memory=0, staging=True)

    assert place(need, [bare, staged]) == Placed("staged")
    assert place(need, [bare]) == Waiting(
        "it uses an s3 datastore: no matching agent has a staging directory for one"
    )
    assert place(Need(cpu=1, memory=0), [bare, staged]) == Placed("bare")
