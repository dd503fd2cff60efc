"""snakepit's side of every measurement, with its defaults unless stated."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import trio

import snakepit
from snakepit._bench import raw
from snakepit._bench.peers import concurrent_throughput
from snakepit.sessions.store import SessionStore


async def calls(workers: int, calls: int, seq: int, concurrency: int = 64
                ) -> tuple[float, list[float], list[float], int, float]:
    """(calls per second from ``concurrency`` tasks, sequential latencies, the raw
    floor's sequential latencies, the pipeline depth the pool settled at under the
    concurrent load, and the host's CPU seconds per call under it).

    The two latencies are taken in alternating blocks of 50, so both see the same
    machine: a round trip through a pipe takes 8 µs when the other CPU is busy and
    40 µs when it has to wake up, and a loaded box swings between the two.
    """
    async with snakepit.open_pool(size=workers, max_queue=max(1024, calls)) as pool:
        for i in range(200):
            await pool.execute("echo", i)

        cpu = time.process_time()
        throughput = await concurrent_throughput(lambda i: pool.execute("echo", i), calls,
                                                 concurrency)
        cpu_per_call = (time.process_time() - cpu) / calls
        depth = pool.effective_pipeline_depth
        ours: list[float] = []
        floor: list[float] = []
        echo = raw.Echo()
        try:
            while len(ours) < seq:
                block = min(50, seq - len(ours))
                for i in range(block):
                    began = time.perf_counter()
                    await pool.execute("echo", i)
                    ours.append(time.perf_counter() - began)
                floor.extend(echo.timed(block))  # blocks the loop: nothing else runs
        finally:
            echo.close()
    return throughput, ours, floor, depth, cpu_per_call


async def start(workers: int, module: str, path: str, *, warm: bool) -> dict[str, float]:
    """Seconds until ``workers`` workers that import ``module`` are ready.

    Warm: ``template`` is the template's own start (it imports once), ``forked`` the
    rest -- forking every worker and their handshakes.
    """
    measured: dict[str, float] = {}

    def started(event: str, measurements: Any, metadata: Any) -> None:
        measured.update(measurements)

    env = {"PYTHONPATH": os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH"))
                                         if p)} if path else {}
    handler = snakepit.telemetry.attach("pool.started", started)
    try:
        began = time.perf_counter()
        async with snakepit.open_pool(size=workers, preload=(module,), warm_start=warm,
                                      env=env):
            total = time.perf_counter() - began
    finally:
        snakepit.telemetry.detach(handler)
    template = measured.get("template_startup", 0.0)
    return {"total": total, "template": template, "forked": total - template}


async def payload(size: int, rounds: int, *, out_of_band: bool) -> float:
    """Seconds per echo of ``size`` bytes, through shared memory or in band."""
    blob = os.urandom(size)
    config = snakepit.PoolConfig(size=1, max_frame_size=max(2 * size, 1 << 20),
                                 shm_threshold=(1 << 20) if out_of_band else None)
    async with snakepit.open_pool(config) as pool:
        await pool.execute("echo", blob)
        began = time.perf_counter()
        for _ in range(rounds):
            await pool.execute("echo", blob)
        return (time.perf_counter() - began) / rounds


async def stream(chunks: int, size: int) -> dict[str, float]:
    """A stream of ``chunks`` chunks of ``size`` bytes: chunks/s and MB/s."""
    config = snakepit.PoolConfig(size=1, handler="snakepit.testing:ChaosHandler")
    async with snakepit.open_pool(config) as pool:
        began = time.perf_counter()
        received = 0
        async with pool.stream("blobs", {"n": chunks, "size": size}) as stream:
            async for chunk in stream:
                received += len(chunk)
        elapsed = time.perf_counter() - began
    assert received == chunks * size
    return {"chunks_per_s": chunks / elapsed, "mb_per_s": received / elapsed / 1e6}


async def session_store(count: int) -> dict[str, float]:
    """Operations per second of the session store (in process, as the pool uses it),
    holding ``count`` sessions beside the ones operated on."""
    store = SessionStore(trio.current_time, default_ttl=3600)
    for _ in range(count // 10):
        store.create()
    ids = [store.create().id for _ in range(count)]
    operations: dict[str, Callable[[int], object]] = {
        "get": lambda i: store.get(ids[i]),
        "touch": lambda i: store.touch(ids[i]),
        "update_metadata": lambda i: store.update_metadata(ids[i], step=i),
        "delete": lambda i: store.delete(ids[i]),
    }
    rates: dict[str, float] = {}
    began = time.perf_counter()
    fresh = [store.create() for _ in range(count)]
    rates["create"] = count / (time.perf_counter() - began)
    del fresh
    for name, operation in operations.items():
        began = time.perf_counter()
        for i in range(count):
            operation(i)
        rates[name] = count / (time.perf_counter() - began)
    await trio.lowlevel.checkpoint()
    return rates
