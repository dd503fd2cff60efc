"""What a call's failure costs the calls around it (the isolation issue's cases).

- **calls after a timeout**: a handler that ignores cancellation passes its deadline;
  the very next call must still succeed (it used to be pipelined behind the stuck call
  and die with it). Reported: how many of those next calls succeeded, and how long
  each took.
- **burst after recovery**: three of four workers die just before a burst of four
  0.3 s calls; the burst should take about one call's time plus a restart, not four
  calls' time in the one surviving worker (head-of-line blocking).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import trio

import snakepit

CHAOS = "snakepit.testing:ChaosHandler"
NAP = 0.3


async def calls_after_a_timeout(rounds: int) -> dict[str, Any]:
    """``rounds`` times: a stuck call times out, then one call; how many succeeded."""
    config = snakepit.PoolConfig(size=1, handler=CHAOS, max_queue=64,
                                 restart=snakepit.RestartPolicy(backoff_initial=0.01))
    succeeded, durations = 0, []
    async with snakepit.open_pool(config) as pool:
        for _ in range(rounds):
            try:
                await pool.execute("sleep", {"seconds": 30}, timeout=0.1)
            except snakepit.WorkerTimeout:
                pass
            began = time.perf_counter()
            try:
                await pool.execute("pid", timeout=10)
            except snakepit.SnakepitError:
                continue
            succeeded += 1
            durations.append(time.perf_counter() - began)
    return {"succeeded": succeeded / rounds,
            "next_call_ms": sorted(durations)[len(durations) // 2] * 1000 if durations
            else float("nan")}


async def kill_all_but_one(pool: snakepit.Pool) -> None:
    """SIGKILL every worker but the first; return once the pool has seen them exit."""
    doomed = pool.workers()[1:]
    exited = trio.Event()
    pids = {worker.pid for worker in doomed}

    def on_exit(event: str, measurements: Any, metadata: Any) -> None:
        pids.discard(metadata["pid"])
        if not pids:
            exited.set()

    handle = snakepit.telemetry.attach("worker.exited", on_exit)
    try:
        for worker in doomed:
            os.kill(worker.pid, signal.SIGKILL)
        await exited.wait()
    finally:
        snakepit.telemetry.detach(handle)


async def burst_after_recovery(rounds: int) -> dict[str, Any]:
    """Seconds for four ``NAP``-second calls made right after three of four workers died."""
    restart = snakepit.RestartPolicy(backoff_initial=0.01, backoff_max=0.05)
    config = snakepit.PoolConfig(size=4, handler=CHAOS, restart=restart)
    took: list[float] = []
    depth = 0
    async with snakepit.open_pool(config) as pool:
        for _ in range(rounds):
            await pool.wait_ready()
            for i in range(50):
                await pool.execute("echo", i)  # quick calls: the pipeline deepens
            depth = pool.effective_pipeline_depth
            await kill_all_but_one(pool)
            began = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(pool.execute, "nap", {"seconds": NAP})
            took.append(time.perf_counter() - began)
    return {"seconds": sorted(took)[len(took) // 2], "serial_seconds": 4 * NAP,
            "depth": depth}


def section(quick: bool) -> list[dict[str, Any]]:
    """The ``isolation`` section of ``snakepit bench``: both measurements, as rows."""
    rounds = 2 if quick else 5
    after = trio.run(calls_after_a_timeout, rounds)
    burst = trio.run(burst_after_recovery, rounds)
    return [{"name": "calls after a timeout", **after},
            {"name": "burst after recovery", **burst}]
