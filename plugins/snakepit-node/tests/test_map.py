"""``pool.map`` with Node.js workers: batch calls through worker.js (js/batch.js)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

import snakepit
from snakepit_node import EXAMPLE_HANDLER


def node_config(**overrides: Any) -> snakepit.PoolConfig:
    settings: dict[str, Any] = {"name": "js", "size": 2, "adapter": "node",
                                "options": {"module": EXAMPLE_HANDLER}}
    settings.update(overrides)
    return snakepit.PoolConfig(**settings)


async def test_map_through_node_workers() -> None:
    async with snakepit.open_pool(node_config()) as pool:
        names = [{"name": str(i)} for i in range(500)]
        async with pool.map("greet", names, chunksize=16) as results:
            assert [r async for r in results] == [f"Hello, {i}!" for i in range(500)]
        assert results.chunks_sent == 32  # many items per frame
        async with pool.map("count", [{"n": n} for n in range(5)]) as results:
            assert [r async for r in results] == [list(range(n)) for n in range(5)]
        messages = [{"message": f"no {i}"} for i in range(5)]
        async with pool.map("fail", messages, chunksize=2, return_exceptions=True) as results:
            errors = [r async for r in results]
        assert [e.remote_message for e in errors] == [f"no {i}" for i in range(5)]
        with pytest.raises(snakepit.RemoteError, match="no 0"):
            async with pool.map("fail", messages) as results:
                async for _ in results:
                    pass


async def test_node_batch_stops_at_the_maps_deadline() -> None:
    async with snakepit.open_pool(node_config()) as pool:
        pids = {w.pid for w in pool.workers()}
        began = time.monotonic()
        with pytest.raises((snakepit.WorkerTimeout, snakepit.QueueTimeout)):
            async with pool.map("slow", [{"seconds": 30}] * 8, chunksize=4,
                                timeout=0.5) as results:
                async for _ in results:
                    pass
        assert time.monotonic() - began < 5
        with trio.fail_after(10):  # the cancelled batches answer; nobody is killed
            assert await pool.execute("greet", {"name": "again"}) == "Hello, again!"
        assert {w.pid for w in pool.workers()} == pids
