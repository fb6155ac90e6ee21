"""The agent's own account of what it has promised: CPU, memory and GPUs held by running attempts.

The daemon places steps by its view of every agent; this is the agent's check of the same thing, so
that two daemons (or a daemon with a stale view) can never oversubscribe it. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from runners.protocol import Capacity, Resources

# Floating-point CPU sums (0.1 + 0.2) must not refuse a step that fits exactly.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Hold:
    cpu: float
    memory: int
    gpus: tuple[int, ...]


class Ledger:
    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._holds: dict[int, Hold] = {}

    @property
    def used_cpu(self) -> float:
        return sum(hold.cpu for hold in self._holds.values())

    @property
    def used_memory(self) -> int:
        return sum(hold.memory for hold in self._holds.values())

    @property
    def used_gpus(self) -> set[int]:
        return {index for hold in self._holds.values() for index in hold.gpus}

    def holds(self, attempt_id: int) -> bool:
        return attempt_id in self._holds

    def reserve(self, attempt_id: int, resources: Resources, gpus: list[int]) -> tuple[int, ...]:
        """Holds ``resources`` for ``attempt_id`` and returns the GPU indices it gets: ``gpus`` (the
        daemon's choice), completed with free ones where the daemon asked for more GPUs than it named.

        Raises ``NoRoom`` with a reason when it does not fit next to what is held already.
        """
        if attempt_id in self._holds:
            raise ValueError(f"attempt {attempt_id} already holds resources")
        if resources.cpu > self.capacity.cpu - self.used_cpu + _EPSILON:
            raise NoRoom(
                f"needs {resources.cpu:g} CPUs, {max(self.capacity.cpu - self.used_cpu, 0):g} "
                f"of {self.capacity.cpu:g} free"
            )
        if resources.memory > self.capacity.memory - self.used_memory:
            raise NoRoom(
                f"needs {resources.memory} bytes of memory, "
                f"{max(self.capacity.memory - self.used_memory, 0)} of {self.capacity.memory} free"
            )
        chosen = self._choose_gpus(resources, gpus)
        self._holds[attempt_id] = Hold(cpu=resources.cpu, memory=resources.memory, gpus=chosen)
        return chosen

    def release(self, attempt_id: int) -> None:
        self._holds.pop(attempt_id, None)

    def _choose_gpus(self, resources: Resources, requested: list[int]) -> tuple[int, ...]:
        by_index = {gpu.index: gpu for gpu in self.capacity.gpus}
        busy = self.used_gpus
        for index in requested:
            if index not in by_index:
                raise NoRoom(f"has no GPU {index} (GPUs: {sorted(by_index) or 'none'})")
            if index in busy:
                raise NoRoom(f"GPU {index} is in use")
        if len(set(requested)) != len(requested):
            raise NoRoom(f"GPU indices repeat: {requested}")
        wanted = max(resources.gpu, len(requested))
        free = [index for index in sorted(by_index) if index not in busy and index not in requested]
        chosen = [*requested, *free[: wanted - len(requested)]]
        if len(chosen) < wanted:
            raise NoRoom(f"needs {wanted} GPUs, {len(requested) + len(free)} of {len(by_index)} free")
        if resources.gpu_memory:
            for index in chosen:
                memory = by_index[index].memory
                # 0 = declared without NVML: unknown, so trusted.
                if memory and memory < resources.gpu_memory:
                    raise NoRoom(f"GPU {index} has {memory} bytes, the step needs {resources.gpu_memory}")
        return tuple(chosen)


class NoRoom(Exception):
    """An assignment that does not fit; the message is the reason sent back to the daemon."""
