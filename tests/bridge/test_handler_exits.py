"""A handler that raises SystemExit or KeyboardInterrupt fails its call, not its worker.

Issue 15, item 1: ``json`` is on the default allow-list, so ``pool.call("json.tool.main")``
(argparse on the worker's own argv) raised SystemExit out of the bridge and ended the
worker; on a pool of 2, twelve such calls broke the pool for good.
"""

from __future__ import annotations

import pytest
import trio

import snakepit
from tests.conftest import chaos_config, support_env


def pids(pool: snakepit.Pool) -> list[int | None]:
    return sorted(worker.pid or 0 for worker in pool.workers())


async def test_json_tool_main_is_a_remote_error_and_the_workers_stay() -> None:
    config = snakepit.PoolConfig(size=2, handler="snakepit.bridge.enhanced:EnhancedHandler")
    assert "json" in config.allowed_targets  # the default allow-list, as in the issue
    async with snakepit.open_pool(config) as pool:
        before = pids(pool)
        with trio.fail_after(60):
            for _ in range(12):
                with pytest.raises(snakepit.RemoteError) as info:
                    await pool.call("json.tool.main")
                assert info.value.remote_type == "SystemExit"
            assert await pool.call("json.dumps", [1, 2]) == "[1, 2]"
        assert pids(pool) == before
        assert pool.stats().restarts == 0


@pytest.mark.parametrize("handler", ["snakepit.testing:ChaosHandler",
                                     "barrier_handler:ThreadedChaosHandler"])
@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
async def test_base_exceptions_out_of_a_handler_answer_the_call(handler: str,
                                                                kind: str) -> None:
    async with snakepit.open_pool(chaos_config(handler=handler, env=support_env())) as pool:
        before = pids(pool)
        with trio.fail_after(60):
            for _ in range(12):
                with pytest.raises(snakepit.RemoteError) as info:
                    await pool.execute("raise", {"type": kind, "message": "bye"})
                assert info.value.remote_type == kind
                assert info.value.remote_message == "bye"
                assert kind in info.value.remote_traceback
            assert await pool.execute("echo", "still here") == "still here"
        assert pids(pool) == before
        assert pool.stats().restarts == 0


@pytest.mark.parametrize("codec", ["msgpack", "json"])
async def test_faults_in_awkward_places_stay_with_their_call(codec: str) -> None:
    config = snakepit.PoolConfig(size=1, handler="unruly_handler:UnrulyHandler",
                                 env=support_env(), codec=codec, max_frame_size=1 << 20)
    async with snakepit.open_pool(config) as pool:
        before = pids(pool)
        with trio.fail_after(60):
            with pytest.raises(snakepit.RemoteError) as info:
                await pool.execute("unprintable")
            assert info.value.remote_type.endswith("Unprintable")
            assert "str() failed" in info.value.remote_message
            # a description that cannot travel as it is: cut, or made valid UTF-8
            with pytest.raises(snakepit.RemoteError) as info:
                await pool.execute("huge_error", {"size": 2 << 20})
            assert "characters cut" in info.value.remote_message
            assert len(info.value.remote_message) < 1 << 20
            with pytest.raises(snakepit.RemoteError) as info:
                await pool.execute("surrogate_error")
            assert info.value.remote_message == "bad \\udcff text"
            # a stream whose second item cannot travel (its answer), and whose generator
            # then raises SystemExit as it is closed: logged, not a second answer
            got: list[object] = []
            with pytest.raises(snakepit.PayloadError):
                async with pool.stream("exit_on_close") as items:
                    async for item in items:
                        got.append(item)
            assert got == [1]
            async with pool.session() as session:  # its end hook raises
                assert await session.execute("remember") == 1
            assert await pool.execute("echo", "still here") == "still here"
        assert pids(pool) == before
        assert pool.stats().restarts == 0
