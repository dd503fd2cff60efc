"""The GPU pool: a snakepit pool kind that places each worker on an NVIDIA GPU.

``PoolConfig(kind="gpu", options={...})``, options:

- ``placement``: ``"one_per_device"`` (default: each worker its own GPU),
  ``"round_robin"`` (spread workers over GPUs), ``"least_memory"`` (the GPU with the
  least memory in use, counting ``fraction`` of a GPU for each worker already placed
  there: a new worker has not allocated anything yet);
- ``fraction``: share of a GPU per worker (default 1.0; 0.5 puts two workers on each);
- ``devices``: GPU indices to use (default: all);
- ``fallback_cpu``: with no GPU, run on the CPU (``CUDA_VISIBLE_DEVICES=""``) instead of
  failing at pool start (default false);
- ``taint_cooldown``: seconds a GPU is avoided after a worker on it died of a device
  fault (default 60);
- ``fault_patterns``: extra regular expressions that mark a device fault in a dead
  worker's stderr (added to :data:`FAULT_PATTERNS`);
- ``refresh_interval``: seconds a device reading is used before a new one is asked for
  (default 2);
- ``nvidia_smi``: the ``nvidia-smi`` to query (default: the one on PATH).

Each worker gets ``CUDA_VISIBLE_DEVICES`` (so frameworks see only its GPU, as device 0),
``SNAKEPIT_GPU`` (the physical index) and ``SNAKEPIT_GPU_FRACTION``. A worker that dies
with a CUDA fatal error in its stderr taints its GPU: replacements go elsewhere until the
cool-down ends (or, with nowhere to go, wait for it).

``nvidia-smi`` never runs on the event loop: the runtime's ``run`` task queries it in a
thread (one query at a time) at pool start and again when a reading older than
``refresh_interval`` is used; ``pool.stats()``, health rounds and placement read the
cached reading and never wait for one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import trio

from snakepit.kinds import BaseRuntime
from snakepit_gpu.devices import Device, NoGPU, query

__all__ = ["FAULT_PATTERNS", "POOL_KINDS", "GPUPool", "GPURuntime", "NoGPU", "query"]

PLACEMENTS = ("one_per_device", "round_robin", "least_memory")

#: What a device fault looks like in a dead worker's stderr: the CUDA errors that leave
#: the context (often the device) unusable, as the runtime (``cudaGetErrorString``), the
#: driver API and the runtime's enum names print them, plus a lost GPU and the kernel's
#: Xid reports. Not merely any mention of CUDA or NVML: "CUDA error: out of memory" and
#: "Can't initialize NVML" warnings are no reason to avoid a GPU.
FAULT_PATTERNS: tuple[str, ...] = (
    r"an illegal memory access was encountered",
    r"an illegal instruction was encountered",
    r"device-side assert(ion)? triggered",
    r"unspecified launch failure",
    r"uncorrectable ECC error",
    r"uncorrectable NVLink error",
    r"hardware stack error",
    r"misaligned address",
    r"invalid program counter",
    r"the launch timed out and was terminated",
    r"CUDA_ERROR_(ILLEGAL_ADDRESS|ILLEGAL_INSTRUCTION|ASSERT|LAUNCH_FAILED|ECC_UNCORRECTABLE"
    r"|HARDWARE_STACK_ERROR|MISALIGNED_ADDRESS|INVALID_PC|INVALID_ADDRESS_SPACE"
    r"|LAUNCH_TIMEOUT|NVLINK_UNCORRECTABLE)\b",
    r"cudaError(IllegalAddress|IllegalInstruction|Assert|LaunchFailure|ECCUncorrectable"
    r"|HardwareStackError|MisalignedAddress|InvalidPc|InvalidAddressSpace|LaunchTimeout"
    r"|NvlinkUncorrectable)\b",
    r"(CUBLAS|CUDNN)_STATUS_EXECUTION_FAILED",
    r"GPU is lost|fallen off the bus|NVML_ERROR_GPU_IS_LOST",
    r"NVRM: Xid",
)
_WARNING = re.compile(r"warn", re.IGNORECASE)


def _errors(options: Mapping[str, Any]) -> list[str]:
    errors = []
    if options.get("placement", "one_per_device") not in PLACEMENTS:
        errors.append(f"options.placement: must be one of {', '.join(PLACEMENTS)}")
    fraction = options.get("fraction", 1.0)
    if not (isinstance(fraction, int | float) and 0 < fraction <= 1):
        errors.append("options.fraction: must be a number in (0, 1]")
    for key, default in (("taint_cooldown", 60.0), ("refresh_interval", 2.0)):
        value = options.get(key, default)
        if not (isinstance(value, int | float) and value >= 0):
            errors.append(f"options.{key}: must be a number >= 0")
    devices = options.get("devices")
    if devices is not None and not (isinstance(devices, list)
                                    and all(isinstance(d, int) for d in devices)):
        errors.append("options.devices: must be a list of GPU indices")
    patterns = options.get("fault_patterns", [])
    if not (isinstance(patterns, list) and all(isinstance(p, str) for p in patterns)):
        errors.append("options.fault_patterns: must be a list of regular expressions")
    else:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                errors.append(f"options.fault_patterns: {pattern!r} is not a regular "
                              f"expression ({exc})")
    return errors


def _now() -> float:
    """Trio's clock (mock clocks included); -inf outside a Trio run (``pool.stats()``
    called after it ended), where nothing is stale and nothing heals."""
    try:
        return trio.current_time()
    except RuntimeError:
        return -math.inf


def is_device_fault(stderr_tail: str, patterns: re.Pattern[str]) -> bool:
    """Whether a dead worker's stderr shows a device fault (warning lines aside)."""
    return any(patterns.search(line) for line in stderr_tail.splitlines()
               if not _WARNING.search(line))


class GPURuntime(BaseRuntime):
    """Placement, device readings and the crash barrier for one pool."""

    def __init__(self, name: str, options: Mapping[str, Any], size: int) -> None:
        self.name = name
        self.size = size
        self.placement = options.get("placement", "one_per_device")
        self.fraction = float(options.get("fraction", 1.0))
        self.per_device = max(1, math.floor(1 / self.fraction + 1e-9))
        self.cooldown = float(options.get("taint_cooldown", 60.0))
        self.refresh_interval = float(options.get("refresh_interval", 2.0))
        self.nvidia_smi = options.get("nvidia_smi", "nvidia-smi")
        self.wanted: list[int] | None = options.get("devices")
        self.fallback_cpu = bool(options.get("fallback_cpu", False))
        self.faults = re.compile("|".join(
            f"(?:{p})" for p in (*FAULT_PATTERNS, *options.get("fault_patterns", []))))
        self.cpu = False
        """No GPU, and ``fallback_cpu``: workers run on the CPU."""
        self.devices: dict[int, Device] = {}
        """The latest reading of the pool's devices, by index."""
        self.read_at = -math.inf
        self.reads = 0
        """How many readings have been taken (pool start included)."""
        self.assigned: dict[str, int] = {}      # worker slot -> device index
        self.tainted: dict[int, float] = {}     # device index -> trio time it heals
        self._next = 0
        self._limiter = trio.CapacityLimiter(1)
        self._refresh = trio.Event()

    # -- readings, off the loop --------------------------------------------------------
    async def _read(self) -> list[Device]:
        # not abandoned on cancel: a pool closing mid-query waits for it (nvidia-smi's
        # own timeout bounds that), so that no process outlives the pool
        return await trio.to_thread.run_sync(query, self.nvidia_smi, limiter=self._limiter)

    def _keep(self, devices: list[Device]) -> None:
        if self.wanted is not None:
            devices = [device for device in devices if device.index in self.wanted]
        if devices:
            self.devices = {device.index: device for device in devices}
        self.read_at = _now()
        self.reads += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Read the devices at pool start, then again whenever a stale reading is used.

        Raises (before the pool starts any worker):
            WorkerStartupError: no GPU (and no ``fallback_cpu``), or none of
                ``options.devices`` is present.
            ConfigError: ``one_per_device`` with more workers than GPU places.
        """
        from snakepit.errors import ConfigError, WorkerStartupError

        try:
            devices = await self._read()
        except NoGPU as exc:
            if not self.fallback_cpu:
                raise WorkerStartupError(f"pool {self.name!r} needs a GPU: {exc} "
                                         "(set options.fallback_cpu to run on the CPU)"
                                         ) from exc
            self.cpu = True
            task_status.started()
            return
        self._keep(devices)
        if not self.devices:
            raise WorkerStartupError(f"none of options.devices {self.wanted} is present")
        places = len(self.devices) * self.per_device
        if self.placement == "one_per_device" and self.size > places:
            raise ConfigError([f"size: {self.size} workers need more GPUs than the "
                               f"{len(self.devices)} available at fraction {self.fraction} "
                               "(use placement round_robin, or a smaller fraction)"])
        task_status.started()
        while True:
            await self._refresh.wait()
            self._refresh = trio.Event()
            try:
                devices = await self._read()
            except NoGPU:
                devices = []  # keep the last reading; try again when it is used next
            self._keep(devices)

    def state(self) -> dict[int, Device]:
        """The latest reading, at once; asks for a new one when it is stale."""
        if _now() - self.read_at > self.refresh_interval:
            self._refresh.set()
        return self.devices

    # -- placement ---------------------------------------------------------------------
    def _usable(self) -> list[int]:
        now = _now()
        return [index for index in self.devices if self.tainted.get(index, 0) <= now]

    def _load(self, index: int) -> int:
        return sum(1 for device in self.assigned.values() if device == index)

    def _deferred(self, message: str) -> Exception:
        from snakepit.errors import PlacementDeferred

        now = _now()
        heals = min(self.tainted.values(), default=now + 1)
        return PlacementDeferred(f"{message}; placing again in {heals - now:.1f}s",
                                 retry_after=max(heals - now, 0.01))

    def _choose(self) -> int:
        usable = self._usable()
        if not usable:
            raise self._deferred("every GPU of the pool is tainted by a recent device fault")
        if self.placement == "one_per_device":
            free = [index for index in usable if self._load(index) < self.per_device]
            if not free:
                raise self._deferred("no untainted GPU has room for another worker")
            return free[0]
        if self.placement == "least_memory":
            state = self.state()

            def expected_use(index: int) -> tuple[float, int, int]:
                # the reading does not show workers placed since: count their share
                device = state[index]
                load = self._load(index)
                return (device.memory_used + load * self.fraction * device.memory_total,
                        load, index)

            return min(usable, key=expected_use)
        choice = usable[self._next % len(usable)]
        self._next += 1
        return choice

    # -- the KindRuntime protocol ------------------------------------------------------
    def worker_env(self, worker_id: str) -> Mapping[str, str]:
        if self.cpu:
            return {"CUDA_VISIBLE_DEVICES": "", "SNAKEPIT_GPU": ""}
        self.assigned.pop(worker_id, None)  # a replacement: place it afresh
        index = self._choose()
        self.assigned[worker_id] = index
        return {"CUDA_VISIBLE_DEVICES": str(index), "SNAKEPIT_GPU": str(index),
                "SNAKEPIT_GPU_FRACTION": str(self.fraction)}

    def worker_exited(self, worker_id: str, pid: int, exit_code: int | None,
                      stderr_tail: str) -> None:
        index = self.assigned.get(worker_id)
        if index is None or exit_code in (0, None):
            return
        if is_device_fault(stderr_tail, self.faults):
            self.tainted[index] = _now() + self.cooldown

    def worker_info(self, worker_id: str) -> Mapping[str, Any]:
        if self.cpu:
            return {"device": "cpu"}
        index = self.assigned.get(worker_id)
        device = self.state().get(index) if index is not None else None
        if device is None:
            return {}
        return {"device": device.index, "name": device.name, "uuid": device.uuid,
                "memory_used": device.memory_used, "memory_total": device.memory_total,
                "utilization": device.utilization,
                "tainted": self.tainted.get(device.index, 0) > _now()}


class GPUPool:
    """The ``gpu`` pool kind."""

    name = "gpu"

    def prepare(self, config: Any) -> GPURuntime:
        """Check the options; the runtime's ``run`` finds the GPUs, off the loop.

        Raises:
            ConfigError: bad options.
        """
        from snakepit.errors import ConfigError

        errors = _errors(config.options)
        if errors:
            raise ConfigError(errors)
        return GPURuntime(config.name, config.options, config.size)


POOL_KINDS = [GPUPool()]
