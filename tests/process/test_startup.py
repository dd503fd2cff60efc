"""Start-up: all workers concurrently; failures surface with the worker's stderr."""

from pathlib import Path

import pytest
import trio

import snakepit
from tests.conftest import child_pids, support_env


async def test_all_workers_start_concurrently(tmp_path: Path) -> None:
    # Each worker blocks in its constructor until all four exist: a serial start
    # would never complete its first handshake.
    config = snakepit.PoolConfig(
        size=4, handler="barrier_handler:BarrierHandler", startup_timeout=20,
        env={**support_env(), "BARRIER_DIR": str(tmp_path), "BARRIER_N": "4"},
    )
    async with snakepit.open_pool(config) as pool:
        pids = {w.pid for w in pool.stats().workers}
        assert len(pids) == 4
        assert {int(p.name) for p in tmp_path.iterdir()} == pids


async def test_missing_executable_is_a_startup_error() -> None:
    with pytest.raises(snakepit.WorkerStartupError, match="cannot start worker"):
        async with snakepit.open_pool(size=2, python="/nonexistent/bin/python"):
            pytest.fail("the pool must not open")


async def test_handler_import_error_carries_stderr_tail() -> None:
    with pytest.raises(snakepit.WorkerStartupError) as info:
        async with snakepit.open_pool(size=2, handler="no_such_module:Handler"):
            pytest.fail("the pool must not open")
    assert "ModuleNotFoundError" in info.value.stderr_tail
    assert "no_such_module" in str(info.value)


async def test_handler_constructor_error_carries_stderr_tail() -> None:
    config = snakepit.PoolConfig(size=3, handler="barrier_handler:BrokenImportHandler",
                                 env=support_env())
    with pytest.raises(snakepit.WorkerStartupError) as info:
        async with snakepit.open_pool(config):
            pytest.fail("the pool must not open")
    assert "missing API key" in info.value.stderr_tail


async def test_silent_worker_hits_startup_timeout() -> None:
    # A shell prints at once; the timeout leaves it ample time to, even under load.
    config = snakepit.PoolConfig(
        size=2, startup_timeout=3.0, kill_timeout=0.5,
        command=("/bin/sh", "-c", "echo warming up >&2; exec sleep 60"),
    )
    with trio.fail_after(30):
        with pytest.raises(snakepit.WorkerStartupError, match="startup_timeout") as info:
            async with snakepit.open_pool(config):
                pytest.fail("the pool must not open")
    assert "warming up" in info.value.stderr_tail
    assert not child_pids()


async def test_msgpack_host_and_json_only_worker_fail_clearly(tmp_path: Path) -> None:
    # A worker environment without msgpack: a module named msgpack that fails to import.
    (tmp_path / "msgpack.py").write_text("raise ImportError('no msgpack here')\n")
    env = {"PYTHONPATH": str(tmp_path)}
    with pytest.raises(snakepit.WorkerStartupError, match="install msgpack"):
        async with snakepit.open_pool(size=1, env=env, codec="msgpack"):
            pytest.fail("the pool must not open")
    async with snakepit.open_pool(size=1, env=env, codec="auto") as pool:
        assert pool.workers()[0].welcome.codec == "json"  # type: ignore[union-attr]
        assert await pool.execute("echo", {"ok": True}) == {"ok": True}
