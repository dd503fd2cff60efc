"""``pool.drain()``: one gate for every path that hands out a worker.

Draining used to refuse ``execute`` only: a session's calls and streams, and calls on
the enhanced bridge, went straight to a worker.
"""

from __future__ import annotations

import pytest

import snakepit
from tests.conftest import chaos_config


async def test_drain_refuses_every_calling_path_and_lets_running_calls_finish() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        async with pool.session() as session, pool.session(mode="strict") as strict:
            assert await session.execute("echo", 1) == 1  # bound before the drain
            assert await strict.execute("echo", 1) == 1
            pool.drain()
            refused = [
                lambda: pool.execute("echo", 2),
                lambda: session.execute("echo", 2),
                lambda: strict.execute("echo", 2),
                lambda: pool.execute_in_session(session.id, "echo", 2),
            ]
            for call in refused:
                with pytest.raises(snakepit.PoolDraining):
                    await call()
            for stream in (pool.stream("count", {"n": 2}), session.stream("count", {"n": 2}),
                           strict.stream("count", {"n": 2})):
                with pytest.raises(snakepit.PoolDraining):
                    async with stream as chunks:
                        raise AssertionError(f"a drained pool opened {chunks!r}")
            assert pool.stats().draining
            pool.resume()
            assert await session.execute("echo", 3) == 3
            async with session.stream("count", {"n": 2}) as chunks:
                assert [chunk async for chunk in chunks] == [0, 1]


async def test_drain_refuses_the_enhanced_bridge_too() -> None:
    config = snakepit.PoolConfig(size=1, handler="snakepit.bridge.enhanced:EnhancedHandler")
    async with snakepit.open_pool(config) as pool:
        assert await pool.call("json.dumps", [1]) == "[1]"
        pool.drain()
        with pytest.raises(snakepit.PoolDraining):
            await pool.call("json.dumps", [2])
        pool.resume()
        assert await pool.call("json.dumps", [3]) == "[3]"
