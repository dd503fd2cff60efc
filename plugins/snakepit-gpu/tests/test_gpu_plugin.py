"""The GPU pool kind with a fake nvidia-smi on PATH (runs everywhere)."""

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import snakepit
from snakepit.plugins import installed_plugins
from snakepit_gpu import query

HERE = Path(__file__).parent
CHAOS = "snakepit.testing:ChaosHandler"


@pytest.fixture
def gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Put a fake nvidia-smi first on PATH; returns a function that sets the devices."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(f"#!{sys.executable}\n" + (HERE / "fake_nvidia_smi.py").read_text())
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    listing = tmp_path / "gpus.json"
    monkeypatch.setenv("FAKE_GPUS", str(listing))

    def set_devices(*used: float) -> None:
        listing.write_text(json.dumps([
            {"index": i, "uuid": f"GPU-{i:04d}", "name": "Fake H100", "used": u,
             "total": 81559, "util": 10 * i} for i, u in enumerate(used)]))

    return set_devices


def gpu_config(size: int, **options: Any) -> snakepit.PoolConfig:
    return snakepit.PoolConfig(size=size, handler=CHAOS, kind="gpu", options=options,
                               restart=snakepit.RestartPolicy(backoff_initial=0.01,
                                                              backoff_max=0.05))


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


async def test_round_robin_and_least_memory_placement(gpus: Any) -> None:
    gpus(70_000, 100, 50_000)
    async with snakepit.open_pool(gpu_config(3, placement="least_memory")) as pool:
        # device 1 has the least memory in use; ties broken by fewer workers
        assert [w.info["device"] for w in pool.stats().workers].count(1) >= 1
    async with snakepit.open_pool(gpu_config(6, placement="round_robin")) as pool:
        assert sorted(w.info["device"] for w in pool.stats().workers) == [0, 0, 1, 1, 2, 2]


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
    config = gpu_config(1, placement="round_robin", taint_cooldown=30)
    async with snakepit.open_pool(config) as pool:
        first = pool.stats().workers[0].info["device"]
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("die_with_message", {
                "message": "RuntimeError: CUDA error: an illegal memory access was "
                           "encountered", "code": 1})
        await pool.wait_ready()
        second = pool.stats().workers[0].info["device"]
        assert second != first  # the tainted GPU is avoided
        # a crash without a device fault taints nothing
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("crash")
        await pool.wait_ready()
        assert pool.stats().workers[0].info["device"] == second


async def test_a_lone_tainted_gpu_is_used_again_after_the_cooldown(gpus: Any) -> None:
    gpus(100)
    config = gpu_config(1, taint_cooldown=0.5)
    async with snakepit.open_pool(config) as pool:
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("die_with_message", {"message": "CUDA error: Xid 79"})
        with trio.fail_after(10):
            await pool.wait_ready()  # the replacement waited out the cool-down
        assert await pool.execute("getenv", {"name": "CUDA_VISIBLE_DEVICES"}) == "0"
        assert pool.stats().workers[0].restarts >= 1


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
