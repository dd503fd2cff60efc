"""A host tool's round trip next to a plain call's (issue 17).

A plain call is host -> worker -> host. A call whose handler calls a host tool adds
worker -> host -> worker inside it: the ``host_call`` frame, a task started in the
pool's nursery under the capacity limiter, and the ``host_result`` frame. Both are
timed sequentially on one worker, in alternating blocks of 50 so that both see the
same machine; the tool itself is an ``async def`` that returns its argument.
"""

from __future__ import annotations

import time
from typing import Any

import trio

import snakepit
from snakepit._bench.report import percentile

CHAOS = "snakepit.testing:ChaosHandler"


async def round_trips(seq: int) -> dict[str, list[float]]:
    """Seconds per sequential call: ``plain`` (echo) and ``host_tool`` (a call whose
    handler makes one host call), ``seq`` of each."""
    async def echo(args: Any) -> Any:
        return args

    config = snakepit.PoolConfig(size=1, handler=CHAOS)
    samples: dict[str, list[float]] = {"plain": [], "host_tool": []}
    async with snakepit.open_pool(config) as pool:
        pool.register_tool("echo", echo)
        calls = {"plain": ("echo", 1), "host_tool": ("ask_host", {"tool": "echo", "args": 1})}
        for command, args in calls.values():  # warm up both paths
            for _ in range(100):
                await pool.execute(command, args)
        while len(samples["plain"]) < seq:
            block = min(50, seq - len(samples["plain"]))
            for name, (command, args) in calls.items():
                for _ in range(block):
                    began = time.perf_counter()
                    await pool.execute(command, args)
                    samples[name].append(time.perf_counter() - began)
    return samples


def measure(seq: int) -> list[dict[str, Any]]:
    """The ``host_tools`` section's rows: p50 and p99 of each kind of call, in µs."""
    samples = trio.run(round_trips, seq)
    return [{"name": name, "p50_us": percentile(runs, 0.50) * 1e6,
             "p99_us": percentile(runs, 0.99) * 1e6} for name, runs in samples.items()]
