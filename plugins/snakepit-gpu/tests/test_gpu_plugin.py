"""The GPU pool kind with a fake nvidia-smi on PATH (runs everywhere)."""

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import snakepit
from snakepit.plugins import installed_plugins
from snakepit_gpu import query
from snakepit_gpu.testing import FakeNvidiaSmi, fake_device

CHAOS = "snakepit.testing:ChaosHandler"


@pytest.fixture
def gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Put the shipped fake nvidia-smi first on PATH; returns a function that sets the
    devices (the memory each one has in use)."""
    fake = FakeNvidiaSmi(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake.directory}{os.pathsep}{os.environ['PATH']}")
    return fake.set_devices


def gpu_config(size: int, **options: Any) -> snakepit.PoolConfig:
    return snakepit.PoolConfig(size=size, handler=CHAOS, kind="gpu", options=options,
                               restart=snakepit.RestartPolicy(backoff_initial=0.01,
                                                              backoff_max=0.05))


def jumpable(config: snakepit.PoolConfig) -> snakepit.PoolConfig:
    """``config`` for a test that jumps the clock: no heartbeats or health rounds,
    which would take a jump for a hung worker."""
    return attrs.evolve(config, heartbeat_interval=None, health_check_interval=None)


@contextlib.contextmanager
def placement_waits() -> Iterator[trio.Event]:
    """An event set when a slot defers a placement (the supervisor logs it)."""
    deferred = trio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "tainted" in record.getMessage():
                deferred.set()

    logger = logging.getLogger("snakepit.supervisor")
    watch = Watch()
    logger.addHandler(watch)
    try:
        yield deferred
    finally:
        logger.removeHandler(watch)


async def placed(pool: snakepit.Pool) -> list[int]:
    return sorted(w.info["device"] for w in pool.stats().workers)


async def devices_seen(pool: snakepit.Pool) -> list[str]:
    return sorted([await pool.execute("getenv", {"name": "CUDA_VISIBLE_DEVICES"})
                   for _ in range(len(pool.workers()) * 3)])


def test_found_through_its_entry_point() -> None:
    assert any(p.distribution == "snakepit-gpu" and p.group == "snakepit.pool_kinds"
               and p.error is None for p in installed_plugins())


def test_nvidia_smi_is_parsed(gpus: Any) -> None:
    gpus(100, 5000)
    devices = query()
    assert [(d.index, d.uuid, d.memory_used, d.memory_total) for d in devices] == [
        (0, "GPU-0000", 100.0, 81559.0), (1, "GPU-0001", 5000.0, 81559.0)]


async def test_one_device_per_worker(gpus: Any) -> None:
    gpus(100, 200)
    async with snakepit.open_pool(gpu_config(2)) as pool:
        seen = {w.id: w.info["device"] for w in pool.stats().workers}
        assert sorted(seen.values()) == [0, 1]
        assert set(await devices_seen(pool)) == {"0", "1"}
        info = pool.stats().workers[0].info
        assert info["memory_total"] == 81559.0 and info["name"] == "Fake H100"


async def test_fractions_share_a_device_and_oversubscription_is_refused(gpus: Any) -> None:
    gpus(100, 200)
    async with snakepit.open_pool(gpu_config(4, fraction=0.5)) as pool:
        devices = sorted(w.info["device"] for w in pool.stats().workers)
        assert devices == [0, 0, 1, 1]
        assert await pool.execute("getenv", {"name": "SNAKEPIT_GPU_FRACTION"}) == "0.5"
    with pytest.raises(snakepit.ConfigError, match="need more GPUs"):
        async with snakepit.open_pool(gpu_config(3)):
            pass


async def test_round_robin_placement(gpus: Any) -> None:
    gpus(70_000, 100, 50_000)
    async with snakepit.open_pool(gpu_config(6, placement="round_robin")) as pool:
        assert await placed(pool) == [0, 0, 1, 1, 2, 2]


async def test_least_memory_counts_the_workers_it_placed(gpus: Any) -> None:
    gpus(70_000, 100, 50_000)  # all placed within one reading: it cannot show them
    async with snakepit.open_pool(gpu_config(3, placement="least_memory")) as pool:
        assert await placed(pool) == [0, 1, 2]  # not [1, 1, 1]
    gpus(100, 30_000)  # a quarter of 81559 MiB each: three fit under device 1's use
    async with snakepit.open_pool(gpu_config(4, placement="least_memory",
                                             fraction=0.25)) as pool:
        assert await placed(pool) == [0, 0, 0, 1]


async def test_no_gpu_fails_clearly_or_falls_back_to_cpu(gpus: Any) -> None:
    gpus()  # no device
    with pytest.raises(snakepit.WorkerStartupError, match="needs a GPU"):
        async with snakepit.open_pool(gpu_config(1)):
            pass
    async with snakepit.open_pool(gpu_config(1, fallback_cpu=True)) as pool:
        assert await pool.execute("getenv", {"name": "CUDA_VISIBLE_DEVICES"}) == ""
        assert pool.stats().workers[0].info == {"device": "cpu"}


async def test_a_device_fault_taints_the_gpu_for_the_cooldown(gpus: Any) -> None:
    gpus(100, 200)
    async with snakepit.open_pool(gpu_config(1, taint_cooldown=3600)) as pool:
        assert await placed(pool) == [0]
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("die_with_message", {
                "message": "RuntimeError: CUDA error: an illegal memory access was "
                           "encountered", "code": 1})
        await pool.wait_ready()
        # one_per_device takes the first free GPU: 0 again, were it not tainted
        assert await placed(pool) == [1]
        assert pool.stats().workers[0].info["tainted"] is False
        # a crash without a device fault taints nothing: 1 is free, so it is used
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("crash")
        await pool.wait_ready()
        assert await placed(pool) == [1]


HARMLESS = [
    "UserWarning: Can't initialize NVML\n  warnings.warn(\"Can't initialize NVML\")",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB",
    "RuntimeError: CUDA error: out of memory",
    "UserWarning: CUDA initialization: CUDA driver initialization failed (Xid?)",
    "ValueError: bad input\n(an illegal memory access warning from a test log)",
]
FATAL = [
    "RuntimeError: CUDA error: device-side assert triggered",
    "RuntimeError: CUDA error: unspecified launch failure",
    "cupy_backends.cuda.api.runtime.CUDARuntimeError: cudaErrorIllegalAddress: an illegal "
    "memory access was encountered",
    "CUDA_ERROR_ECC_UNCORRECTABLE",
    "RuntimeError: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle)`",
    "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.",
]


@pytest.mark.parametrize(("stderr", "taints"), [*((m, False) for m in HARMLESS),
                                                 *((m, True) for m in FATAL)])
async def test_only_cuda_fatal_errors_taint(gpus: Any, stderr: str, taints: bool) -> None:
    gpus(100, 200)
    async with snakepit.open_pool(gpu_config(1, taint_cooldown=3600)) as pool:
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("die_with_message", {"message": stderr, "code": 1})
        await pool.wait_ready()
        # GPU 0 has less memory used; a tainted GPU 0 sends the replacement to GPU 1
        assert await placed(pool) == ([1] if taints else [0])


async def test_a_lone_tainted_gpu_is_used_again_after_the_cooldown(
        gpus: Any, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.rate = 1.0  # real time, plus jumps
    gpus(100)
    async with snakepit.open_pool(jumpable(gpu_config(1, taint_cooldown=3600))) as pool:
        with placement_waits() as deferred:
            with pytest.raises(snakepit.WorkerCrashed):
                await pool.execute("die_with_message", {
                    "message": "RuntimeError: CUDA error: device-side assert triggered"})
            crashed_at = trio.current_time()
            with trio.fail_after(30):
                await deferred.wait()  # nowhere to go: the replacement waits...
        assert pool.stats().workers[0].state == "waiting" and pool.workers() == []
        mock_clock.jump(3600)  # ...out the cool-down, and only that
        with trio.fail_after(30):
            await pool.wait_ready()
        assert trio.current_time() - crashed_at >= 3600
        assert await pool.execute("getenv", {"name": "CUDA_VISIBLE_DEVICES"}) == "0"
        assert pool.stats().workers[0].restarts == 1


async def test_device_readings_refresh_off_the_event_loop(
        gpus: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mock_clock: trio.testing.MockClock) -> None:
    mock_clock.rate = 1.0
    gpus(100, 200)
    config = jumpable(gpu_config(1, refresh_interval=5))
    async with snakepit.open_pool(config) as pool:
        assert pool.stats().workers[0].info["memory_used"] == 100.0
        gpus(5555, 200)
        gate = tmp_path / "smi.sock"
        monkeypatch.setenv("FAKE_GPUS_GATE", str(gate))  # the next query waits for us
        listener = trio.socket.socket(trio.socket.AF_UNIX)
        await listener.bind(str(gate))
        listener.listen(1)
        mock_clock.jump(6)  # the reading is stale now
        # stats() answers at once from the reading it has, and asks for a new one...
        assert pool.stats().workers[0].info["memory_used"] == 100.0
        with listener, trio.fail_after(30):
            connection, _ = await listener.accept()  # ...which runs in a thread,
        with connection:
            assert await connection.recv(16) == b"query\n"
            assert await pool.execute("ping")  # while the loop goes on serving calls
            assert pool.stats().workers[0].info["memory_used"] == 100.0
            await connection.send(b"go")
            with trio.fail_after(30):
                while pool.stats().workers[0].info["memory_used"] != 5555.0:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # polling: nothing signals a new reading


async def test_device_telemetry_is_reported(gpus: Any) -> None:
    gpus(1234, 200)
    seen: list[dict[str, Any]] = []
    handler = snakepit.telemetry.attach("worker.info",
                                        lambda e, m, meta: seen.append({**m, **meta}))
    try:
        config = snakepit.PoolConfig(size=1, handler=CHAOS, kind="gpu",
                                     health_check_interval=0.05)
        async with snakepit.open_pool(config) as pool:
            with trio.fail_after(5):
                while not seen:
                    await pool.execute("ping")  # a health round passes meanwhile
        assert seen[0]["memory_used"] == 1234.0 and seen[0]["name"] == "Fake H100"
    finally:
        snakepit.telemetry.detach(handler)


async def test_the_shipped_fake_nvidia_smi_is_named_by_the_pools_options(
        tmp_path: Path) -> None:
    """What a user on a CPU machine does: snakepit_gpu.testing, no PATH changes."""
    fake = FakeNvidiaSmi(tmp_path)
    fake.set_devices(fake_device(0, 512, name="Fake A100", memory_total=40960), 100)
    config = gpu_config(2, nvidia_smi=str(fake.path))
    async with snakepit.open_pool(config) as pool:
        infos = sorted((w.info["device"], w.info["name"], w.info["memory_total"])
                       for w in pool.stats().workers)
        assert infos == [(0, "Fake A100", 40960.0), (1, "Fake H100", 81559.0)]
        assert set(await devices_seen(pool)) == {"0", "1"}
    fake.break_driver()
    with pytest.raises(snakepit.WorkerStartupError, match="nvidia-smi"):
        async with snakepit.open_pool(config):
            pass
