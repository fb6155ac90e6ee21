"""``sluice agents``: the runner agents the daemon knows, with capacity, free capacity and heartbeats."""

from __future__ import annotations

from collections import Counter
from typing import Any

import click
import msgspec

from daemon.cli import output
from daemon.cli.commands import Row, json_option, show_list


def register(group: click.Group) -> None:
    group.add_command(agents)


class Gpu(msgspec.Struct):
    name: str = "GPU"
    index: int | None = None
    memory: int | None = None


class Capacity(msgspec.Struct):
    cpu: float = 0.0
    memory: int = 0
    gpus: list[Gpu] = []


class Free(msgspec.Struct):
    cpu: float = 0.0
    memory: int = 0
    gpu: int = 0


class AgentRow(Row):
    COLUMNS = ("NAME", "STATUS", "CPU", "MEMORY", "GPUS", "LABELS", "RUNNING", "LAST HEARTBEAT")
    name: str
    status: str
    capacity: Capacity = msgspec.field(default_factory=Capacity)
    free: Free = msgspec.field(default_factory=Free)
    labels: dict[str, Any] = msgspec.field(default_factory=dict)
    running: list[Any] = msgspec.field(default_factory=list)
    last_heartbeat: str | None = None

    def cells(self) -> tuple[str, ...]:
        return (
            self.name,
            self.status,
            f"{output.format_number(self.free.cpu)}/{output.format_number(self.capacity.cpu)}",
            f"{output.format_size(self.free.memory)}/{output.format_size(self.capacity.memory)}",
            self._gpus(),
            ",".join(f"{key}={value}" for key, value in sorted(self.labels.items())) or "-",
            str(len(self.running)),
            output.format_age(self.last_heartbeat),
        )

    def _gpus(self) -> str:
        """``1/2 2x NVIDIA H100``, ``0/2 NVIDIA A10, NVIDIA T4``; ``-`` without GPUs."""
        if not self.capacity.gpus:
            return "-"
        models = Counter(gpu.name for gpu in self.capacity.gpus)
        names = ", ".join(name if count == 1 else f"{count}x {name}" for name, count in models.items())
        return f"{self.free.gpu}/{len(self.capacity.gpus)} {names}"


@click.command()
@json_option
@output.reports_errors
def agents(as_json: bool) -> None:
    """List runner agents and their free capacity.

    Shows free/total CPU, memory and GPUs, labels, running steps and the last heartbeat's age.
    """
    show_list("/agents", AgentRow, as_json=as_json, empty="no agents")
