"""The GPU pool: a snakepit pool kind that places each worker on an NVIDIA GPU.

``PoolConfig(kind="gpu", options={...})``, options:

- ``placement``: ``"one_per_device"`` (default: each worker its own GPU),
  ``"round_robin"`` (spread workers over GPUs), ``"least_memory"`` (the GPU with the
  least memory in use);
- ``fraction``: share of a GPU per worker (default 1.0; 0.5 puts two workers on each);
- ``devices``: GPU indices to use (default: all);
- ``fallback_cpu``: with no GPU, run on the CPU (``CUDA_VISIBLE_DEVICES=""``) instead of
  failing at pool start (default false);
- ``taint_cooldown``: seconds a GPU is avoided after a worker on it died of a device
  fault (default 60);
- ``nvidia_smi``: the ``nvidia-smi`` to query (default: the one on PATH).

Each worker gets ``CUDA_VISIBLE_DEVICES`` (so frameworks see only its GPU, as device 0),
``SNAKEPIT_GPU`` (the physical index) and ``SNAKEPIT_GPU_FRACTION``. A worker that dies
with a CUDA error in its stderr taints its GPU: replacements go elsewhere until the
cool-down ends (or, with nowhere to go, wait for it, backing off like any failed start).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from snakepit_gpu.devices import Device, NoGPU, query

__all__ = ["POOL_KINDS", "GPUPool", "NoGPU", "query"]

PLACEMENTS = ("one_per_device", "round_robin", "least_memory")
FAULT_MARKERS = ("CUDA error", "cudaError", "CUDA_ERROR", "CUBLAS_STATUS", "CUDNN_STATUS",
                 "device-side assert", "illegal memory access", "Xid", "NVML",
                 "uncorrectable ECC")


def _errors(options: Mapping[str, Any]) -> list[str]:
    errors = []
    if options.get("placement", "one_per_device") not in PLACEMENTS:
        errors.append(f"options.placement: must be one of {', '.join(PLACEMENTS)}")
    fraction = options.get("fraction", 1.0)
    if not (isinstance(fraction, int | float) and 0 < fraction <= 1):
        errors.append("options.fraction: must be a number in (0, 1]")
    cooldown = options.get("taint_cooldown", 60.0)
    if not (isinstance(cooldown, int | float) and cooldown >= 0):
        errors.append("options.taint_cooldown: must be a number >= 0")
    devices = options.get("devices")
    if devices is not None and not (isinstance(devices, list)
                                    and all(isinstance(d, int) for d in devices)):
        errors.append("options.devices: must be a list of GPU indices")
    return errors


class GPURuntime:
    """Placement and crash barrier for one pool."""

    def __init__(self, devices: list[Device], options: Mapping[str, Any], size: int) -> None:
        self.devices = {device.index: device for device in devices}
        self.placement = options.get("placement", "one_per_device")
        self.fraction = float(options.get("fraction", 1.0))
        self.per_device = max(1, math.floor(1 / self.fraction + 1e-9))
        self.cooldown = float(options.get("taint_cooldown", 60.0))
        self.nvidia_smi = options.get("nvidia_smi", "nvidia-smi")
        self.assigned: dict[str, int] = {}      # worker slot -> device index
        self.tainted: dict[int, float] = {}     # device index -> monotonic time it heals
        self._next = 0
        self._state: tuple[float, dict[int, Device]] = (time.monotonic(), self.devices)
        if self.placement == "one_per_device" and size > len(devices) * self.per_device:
            from snakepit.errors import ConfigError

            raise ConfigError([f"size: {size} workers need more GPUs than the "
                               f"{len(devices)} available at fraction {self.fraction} "
                               "(use placement round_robin, or a smaller fraction)"])

    def _usable(self) -> list[int]:
        now = time.monotonic()
        return [index for index in self.devices if self.tainted.get(index, 0) <= now]

    def _load(self, index: int) -> int:
        return sum(1 for device in self.assigned.values() if device == index)

    def _choose(self, worker_id: str) -> int:
        usable = self._usable()
        if not usable:
            from snakepit.errors import PlacementDeferred

            heals = min(self.tainted.values()) - time.monotonic()
            raise PlacementDeferred("every GPU of the pool is tainted by a recent device "
                                    f"fault; placing again in {heals:.1f}s",
                                    retry_after=max(heals, 0.01))
        if self.placement == "one_per_device":
            free = [index for index in usable if self._load(index) < self.per_device]
            if not free:
                from snakepit.errors import PlacementDeferred

                heals = min(self.tainted.values(), default=time.monotonic() + 1)
                raise PlacementDeferred("no untainted GPU has room for another worker",
                                        retry_after=max(heals - time.monotonic(), 0.01))
            return free[0]
        if self.placement == "least_memory":
            state = self.state()
            return min(usable, key=lambda index: (state[index].memory_used, self._load(index)))
        choice = usable[self._next % len(usable)]
        self._next += 1
        return choice

    def worker_env(self, worker_id: str) -> Mapping[str, str]:
        self.assigned.pop(worker_id, None)  # a replacement: place it afresh
        index = self._choose(worker_id)
        self.assigned[worker_id] = index
        return {"CUDA_VISIBLE_DEVICES": str(index), "SNAKEPIT_GPU": str(index),
                "SNAKEPIT_GPU_FRACTION": str(self.fraction)}

    def worker_exited(self, worker_id: str, pid: int, exit_code: int | None,
                      stderr_tail: str) -> None:
        index = self.assigned.get(worker_id)
        if index is None or exit_code in (0, None):
            return
        if any(marker in stderr_tail for marker in FAULT_MARKERS):
            self.tainted[index] = time.monotonic() + self.cooldown

    def state(self) -> dict[int, Device]:
        """The devices' current state (``nvidia-smi`` at most once a second)."""
        read_at, devices = self._state
        if time.monotonic() - read_at > 1.0:
            try:
                devices = {device.index: device for device in query(self.nvidia_smi)}
            except NoGPU:
                pass  # keep the last reading
            self._state = (time.monotonic(), devices)
        return devices

    def worker_info(self, worker_id: str) -> Mapping[str, Any]:
        index = self.assigned.get(worker_id)
        device = self.state().get(index) if index is not None else None
        if device is None:
            return {}
        return {"device": device.index, "name": device.name, "uuid": device.uuid,
                "memory_used": device.memory_used, "memory_total": device.memory_total,
                "utilization": device.utilization,
                "tainted": self.tainted.get(device.index, 0) > time.monotonic()}


class CPURuntime:
    """``fallback_cpu`` with no GPU: workers see no device at all."""

    def worker_env(self, worker_id: str) -> Mapping[str, str]:
        return {"CUDA_VISIBLE_DEVICES": "", "SNAKEPIT_GPU": ""}

    def worker_exited(self, worker_id: str, pid: int, exit_code: int | None,
                      stderr_tail: str) -> None:
        pass

    def worker_info(self, worker_id: str) -> Mapping[str, Any]:
        return {"device": "cpu"}


class GPUPool:
    """The ``gpu`` pool kind."""

    name = "gpu"

    def prepare(self, config: Any) -> GPURuntime | CPURuntime:
        from snakepit.errors import ConfigError, WorkerStartupError

        options = config.options
        errors = _errors(options)
        if errors:
            raise ConfigError(errors)
        try:
            devices = query(options.get("nvidia_smi", "nvidia-smi"))
        except NoGPU as exc:
            if options.get("fallback_cpu", False):
                return CPURuntime()
            raise WorkerStartupError(f"pool {config.name!r} needs a GPU: {exc} "
                                     "(set options.fallback_cpu to run on the CPU)") from exc
        wanted = options.get("devices")
        if wanted is not None:
            devices = [device for device in devices if device.index in wanted]
            if not devices:
                raise WorkerStartupError(f"none of options.devices {wanted} is present")
        return GPURuntime(devices, options, config.size)


POOL_KINDS = [GPUPool()]
