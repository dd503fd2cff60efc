"""Ray pools against a real local Ray (2 CPUs, 1 GPU), inside a loopback-only namespace.

Each test leaves no actor and no worker process behind (``conftest.no_leftovers``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import snakepit
from conftest import (  # this directory's (pytest puts it on sys.path)
    is_alive,
    loopback_only,
    parent_pid,
)
from snakepit_ray.actor import SIGNAL
from snakepit_ray.channel import open_channel, read_started
from snakepit_ray.driver import ray_call, wait_future
from snakepit_ray.kind import actor_class

HERE = Path(__file__).parent


def ray_config(**overrides: Any) -> snakepit.PoolConfig:
    settings: dict[str, Any] = {
        "name": "ray", "size": 2, "kind": "ray", "handler": "snakepit.testing:ChaosHandler",
        "startup_timeout": 30.0, "shutdown_grace": 2.0, "kill_timeout": 1.0,
        "restart": snakepit.RestartPolicy(backoff_initial=0.01, backoff_max=0.05),
        "options": {"num_cpus": 0.5},
    }
    settings.update(overrides)
    return snakepit.PoolConfig(**settings)


async def wait_until(predicate: Any, within: float = 10.0) -> None:
    """Poll ``predicate`` (process states, Ray's resources: nothing to wait on)."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


async def free_cpus() -> float:
    import ray

    return float((await ray_call(ray.available_resources)).get("CPU", 0.0))


async def started(pool: snakepit.Pool, nursery: trio.Nursery, command: str,
                  args: Any, results: list[Any], **kwargs: Any) -> None:
    """Start ``command`` and return once the worker runs it (it reports progress)."""
    running = trio.Event()

    async def call() -> None:
        try:
            results.append(await pool.execute(command, args, on_progress=lambda *_: running.set(),
                                              **kwargs))
        except snakepit.SnakepitError as exc:
            results.append(exc)

    nursery.start_soon(call)
    await running.wait()


# -- calls -------------------------------------------------------------------------------
async def test_calls_streams_and_progress_on_workers_in_actors() -> None:
    config = ray_config(env={"SNAKEPIT_RAY_TEST": "from the pool"})
    async with snakepit.open_pool(config) as pool:
        assert await pool.execute("echo", {"x": [1, "two", b"3"]}, timeout=10) == {
            "x": [1, "two", b"3"]}
        results = await gather(pool, [("echo", i) for i in range(200)])
        assert results == list(range(200))
        async with pool.stream("count", {"n": 50}, timeout=10, window=4) as chunks:
            assert [n async for n in chunks] == list(range(50))
        seen: list[float] = []
        assert await pool.execute("progress", {"steps": 3},
                                  on_progress=lambda done, *_: seen.append(done)) == 3
        assert seen == [1, 2, 3]
        with pytest.raises(snakepit.RemoteError, match="boom"):
            await pool.execute("raise", {"message": "boom"}, timeout=10)
        assert await pool.execute("print_stdout", "noise", timeout=10) == "ok"
        assert await pool.execute("big", {"size": 4 << 20}, timeout=20) == b"x" * (4 << 20)
        assert await pool.execute("getenv", {"name": "SNAKEPIT_RAY_TEST"}) == "from the pool"

        workers = pool.stats().workers
        assert {w.info["ray_node"] for w in workers} == {"127.0.0.1"}
        assert len({w.info["ray_actor"] for w in workers}) == 2
        assert all(len(bytes.fromhex(w.info["ray_actor"])) == 16 for w in workers)
        for worker in workers:
            # the worker is the actor's child: Ray placed it, the actor started it
            assert parent_pid(worker.pid) == worker.info["actor_pid"]
        pids = {await pool.execute("pid", timeout=10) for _ in range(20)}
        assert pids == {w.pid for w in workers}


async def gather(pool: snakepit.Pool, calls: list[tuple[str, Any]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    async def one(index: int, command: str, args: Any) -> None:
        results[index] = await pool.execute(command, args, timeout=20)

    async with trio.open_nursery() as nursery:
        for index, (command, args) in enumerate(calls):
            nursery.start_soon(one, index, command, args)
    return results


async def test_sessions_keep_affinity_to_their_worker() -> None:
    async with snakepit.open_pool(ray_config()) as pool:
        async with pool.session() as first, pool.session() as second:
            for expected in range(1, 6):
                assert await first.execute("incr") == expected
            assert await second.execute("incr") == 1
            pids = {await first.execute("pid") for _ in range(5)}
            assert pids == {first.record.worker_pid}
            assert await first.execute("incr") == 6


async def test_recycling_starts_a_new_actor() -> None:
    async with snakepit.open_pool(ray_config(size=1, max_calls=3)) as pool:
        actors, pids = set(), set()
        for _ in range(7):
            pids.add(await pool.execute("pid", timeout=20))
            await pool.wait_ready()
            actors.add(pool.stats().workers[0].info["ray_actor"])
        assert len(pids) == 3 and len(actors) == 3


# -- failures ----------------------------------------------------------------------------
async def test_timeout_kills_the_actor_and_ray_places_a_replacement() -> None:
    async with snakepit.open_pool(ray_config(size=1, cancel_grace=0.2)) as pool:
        before = pool.stats().workers[0]
        with pytest.raises(snakepit.WorkerTimeout):
            await pool.execute("sleep", {"seconds": 30}, timeout=0.5)  # ignores cancel
        await wait_until(lambda: pool.stats().workers[0].restarts == 1)
        await pool.wait_ready()
        after = pool.stats().workers[0]
        assert after.info["ray_actor"] != before.info["ray_actor"]
        await wait_until(lambda: not is_alive(before.info["actor_pid"])
                         and not is_alive(before.pid))
        assert await pool.execute("echo", "again", timeout=10) == "again"


async def test_actor_death_mid_call_is_worker_crashed() -> None:
    async with snakepit.open_pool(ray_config(size=1)) as pool:
        before = pool.stats().workers[0]
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            await started(pool, nursery, "sleep", {"seconds": 30}, results, timeout=30)
            os.kill(before.info["actor_pid"], signal.SIGKILL)  # as the OOM killer would
        [error] = results
        assert isinstance(error, snakepit.WorkerCrashed)
        await wait_until(lambda: not is_alive(before.pid))  # the worker died with its actor
        await pool.wait_ready()
        after = pool.stats().workers[0]
        assert after.info["ray_actor"] != before.info["ray_actor"]
        assert await pool.execute("echo", 1, timeout=10) == 1


async def test_worker_crash_is_worker_crashed_and_replaced() -> None:
    async with snakepit.open_pool(ray_config(size=1)) as pool:
        with pytest.raises(snakepit.WorkerCrashed) as caught:
            await pool.execute("crash", {"code": 3}, timeout=10)
        assert caught.value.exit_code == 3
        await pool.wait_ready()
        assert await pool.execute("echo", 2, timeout=10) == 2


async def test_a_worker_that_cannot_start_reports_its_stderr() -> None:
    config = ray_config(size=1, handler="no_such_module:Handler")
    with pytest.raises(snakepit.WorkerStartupError) as caught:
        async with snakepit.open_pool(config):
            pass
    assert "no_such_module" in caught.value.stderr_tail  # it came over the stderr socket
    await wait_until(lambda: free_cpus_now() == 2.0)


def free_cpus_now() -> float:
    import ray

    return float(ray.available_resources().get("CPU", 0.0))


async def test_gpu_placement_through_ray_resources() -> None:
    config = ray_config(size=1, options={"num_cpus": 0.5, "num_gpus": 1})
    async with snakepit.open_pool(config) as pool:
        # Ray gave the actor the cluster's one GPU; the worker inherits the actor's view
        assert await pool.execute("getenv", {"name": "CUDA_VISIBLE_DEVICES"}) == "0"
        assert await free_gpus() == 0.0
    await wait_until(lambda: free_gpus_now() == 1.0)


async def free_gpus() -> float:
    return await trio.to_thread.run_sync(free_gpus_now)


def free_gpus_now() -> float:
    import ray

    return float(ray.available_resources().get("GPU", 0.0))


async def test_resources_nowhere_available_fail_after_placement_timeout() -> None:
    config = ray_config(size=1, options={"resources": {"TPU": 1}, "placement_timeout": 1.0})
    with pytest.raises(snakepit.WorkerStartupError, match="placement_timeout"):
        async with snakepit.open_pool(config):
            pass


async def test_custom_resources_and_runtime_env_reach_the_actor() -> None:
    config = ray_config(size=1, options={
        "num_cpus": 0.5, "resources": {"snakepit_test": 0}, "memory": 10 << 20,
        "runtime_env": {"env_vars": {"FROM_RUNTIME_ENV": "yes"}}})
    async with snakepit.open_pool(config) as pool:
        assert await pool.execute("getenv", {"name": "FROM_RUNTIME_ENV"}) == "yes"


# -- no leftovers ------------------------------------------------------------------------
async def test_leaving_the_pool_kills_every_actor() -> None:
    async with snakepit.open_pool(ray_config(size=2)) as pool:
        workers = pool.stats().workers
        assert await free_cpus() == 1.0
    for worker in workers:  # gone when the block is left: ray.kill was confirmed
        assert not is_alive(worker.pid)
    await wait_until(lambda: not any(is_alive(w.info["actor_pid"]) for w in workers))
    await wait_until(lambda: free_cpus_now() == 2.0)


async def test_a_killed_host_leaves_no_actor_behind(ray_address: str) -> None:
    host = subprocess.Popen(  # noqa: ASYNC220 (a host to kill; it runs on its own)
        [sys.executable, str(HERE / "host_script.py"), ray_address, "2"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None
        line = await trio.to_thread.run_sync(host.stdout.readline)
        workers = json.loads(line)
        assert len(workers) == 2
        pids = [w["pid"] for w in workers] + [w["actor_pid"] for w in workers]
        assert all(is_alive(pid) for pid in pids)
        host.send_signal(signal.SIGKILL)
        host.wait()
        # Ray kills a dead driver's actors; each worker dies with its actor
        await wait_until(lambda: not any(is_alive(pid) for pid in pids), within=30)
        await wait_until(lambda: free_cpus_now() == 2.0)
    finally:
        host.kill()
        host.wait()


# -- authentication ----------------------------------------------------------------------
async def test_only_authenticated_connections_reach_the_worker(ray_temp_dir: Path) -> None:
    secret = os.urandom(32)
    handle = await ray_call(lambda: actor_class().options(num_cpus=0.5).remote(
        secret, [sys.executable, "-m", "snakepit.bridge", "--handler",
                 "snakepit.testing:ChaosHandler"], {}, None, True, None, 30.0))
    try:
        host, port, _, actor_pid, actor_id = await wait_future(
            await ray_call(lambda: handle.address.remote().future()))
        assert len(bytes.fromhex(actor_id)) == 16  # Ray's actor id, from its public API
        listening = await wait_future(
            await ray_call(lambda: handle.listening_on.remote().future()))
        assert host == "127.0.0.1" and listening[0] == "127.0.0.1"  # the node, not 0.0.0.0

        # a peer without the secret: dropped before anything reaches a worker
        with pytest.raises(snakepit.WorkerStartupError, match="closed the connection"):
            await open_channel(host, port, os.urandom(32), b"w")
        # a peer that speaks something else entirely
        stranger = trio.socket.socket()
        await stranger.connect((host, port))
        await stranger.recv(64)  # the greeting
        await stranger.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 64)
        with trio.fail_after(10):
            try:
                while await stranger.recv(64):
                    pass  # ... until the actor hangs up
            except ConnectionResetError:
                pass  # (it did, with our bytes unread)
        stranger.close()
        rejections = await wait_future(await ray_call(lambda: handle.rejections.remote().future()))
        assert len(rejections) == 2
        assert "bad HMAC" in rejections[0] and "unknown role" in rejections[1]
        # ... and logged, in the actor's log (which Ray also forwards to the driver)
        logs = ray_temp_dir / "session_latest" / "logs"
        logged = "".join(f.read_text() for f in logs.glob(f"worker-*-{actor_pid}.*"))
        assert logged.count("dropped an unauthenticated connection") == 2, logged

        # the host, with the secret: three channels, then the worker starts
        channels = [await open_channel(host, port, secret, role) for role in (b"c", b"e", b"w")]
        pid = await read_started(channels[0])
        assert is_alive(pid)
        # and once they are in, nobody can connect any more
        with pytest.raises(OSError):
            probe = socket.create_connection((host, port), timeout=2)
            probe.close()
        # the control channel signals the worker; its exit is reported back
        await channels[0].send(SIGNAL + bytes([signal.SIGKILL]))
        assert await channels[0].recv(9) == b"X" + (-9).to_bytes(8, "big", signed=True)
        for channel in channels:
            channel.close()
    finally:
        import ray

        await ray_call(ray.kill, handle)


def test_the_suite_runs_on_loopback_only() -> None:
    assert loopback_only()
