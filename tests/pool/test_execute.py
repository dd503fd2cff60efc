"""pool.execute: results, typed errors, payload limits, stats."""

import os

import pytest
import trio

import snakepit
from tests.conftest import chaos_config


async def test_builtin_commands_answer() -> None:
    async with snakepit.open_pool(size=2) as pool:
        assert await pool.execute("echo", {"x": 1}, timeout=5) == {"x": 1}
        assert await pool.execute("compute", {"op": "add", "a": 2, "b": 3}) == 5
        assert await pool.execute("compute", {"op": "sum", "values": [1, 2, 3]}) == 6
        pong = await pool.execute("ping")
        assert pong["pong"] is True
        assert pong["pid"] in {w.pid for w in pool.stats().workers}
        info = await pool.execute("info")
        assert info["pid"] in {w.pid for w in pool.stats().workers}
        assert {"ping", "echo", "info", "compute"} <= set(info["commands"])
        assert info["uptime"] > 0
        assert info["python"].startswith("3.")


@pytest.mark.parametrize("codec", ["msgpack", "json", "auto"])
async def test_each_codec_carries_calls(codec: str) -> None:
    value = {"text": "héllo", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
    async with snakepit.open_pool(size=1, codec=codec) as pool:
        assert await pool.execute("echo", value) == value
        worker = pool.workers()[0]
        assert worker.welcome is not None
        assert worker.welcome.codec == ("msgpack" if codec == "auto" else codec)


async def test_msgpack_carries_bytes() -> None:
    blob = os.urandom(100_000)
    async with snakepit.open_pool(size=1) as pool:
        assert await pool.execute("echo", blob) == blob


async def test_many_concurrent_calls_all_return_their_own_result() -> None:
    async with snakepit.open_pool(size=3) as pool:
        results: dict[int, int] = {}

        async def one(i: int) -> None:
            results[i] = await pool.execute("compute", {"op": "mul", "a": i, "b": 2})

        async with trio.open_nursery() as nursery:
            for i in range(500):
                nursery.start_soon(one, i)
        assert results == {i: i * 2 for i in range(500)}
        stats = pool.stats()
        assert stats.calls == stats.succeeded == 500
        assert sum(w.calls_served for w in stats.workers) == 500
        assert all(w.calls_served > 0 for w in stats.workers)


async def test_handler_exception_is_remote_error_with_traceback() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        pid = await pool.execute("pid")
        with pytest.raises(snakepit.RemoteError) as info:
            await pool.execute("raise", {"message": "bad input"})
        error = info.value
        assert error.remote_type == "ValueError"
        assert error.remote_message == "bad input"
        assert "raise ValueError" in error.remote_traceback
        assert error.retryable is False
        assert await pool.execute("pid") == pid  # the worker stays in service


async def test_unknown_command_is_typed() -> None:
    async with snakepit.open_pool(size=1) as pool:
        with pytest.raises(snakepit.UnknownCommand, match="no_such_command"):
            await pool.execute("no_such_command")
        assert isinstance(snakepit.UnknownCommand("x", "y"), snakepit.RemoteError)


async def test_oversized_arguments_fail_before_sending() -> None:
    async with snakepit.open_pool(size=1, max_frame_size=4096) as pool:
        pid = pool.workers()[0].pid
        with pytest.raises(snakepit.PayloadError):
            await pool.execute("echo", "x" * 10_000)
        with pytest.raises(snakepit.PayloadError):
            await pool.execute("echo", {"value": object()})
        assert await pool.execute("echo", "small") == "small"
        assert pool.workers()[0].pid == pid
        assert pool.stats().workers[0].restarts == 0


async def test_oversized_or_unencodable_result_is_reported_and_worker_survives() -> None:
    async with snakepit.open_pool(chaos_config(size=1, max_frame_size=4096)) as pool:
        pid = await pool.execute("pid")
        with pytest.raises(snakepit.PayloadError, match="max_frame_size"):
            await pool.execute("big", {"size": 10_000})
        with pytest.raises(snakepit.PayloadError, match="cannot encode"):
            await pool.execute("unencodable")
        assert await pool.execute("pid") == pid


async def test_json_result_with_bytes_is_payload_error() -> None:
    async with snakepit.open_pool(chaos_config(size=1, codec="json")) as pool:
        with pytest.raises(snakepit.PayloadError):
            await pool.execute("big", {"size": 10})


async def test_print_in_handler_does_not_corrupt_the_wire(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    caplog.set_level("INFO", logger="snakepit.worker.stderr")
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        assert await pool.execute("print_stdout", "hi") == "ok"
        assert await pool.execute("echo", 1) == 1
    assert any("chatty handler output hi" in r.getMessage() for r in caplog.records)
    assert any(getattr(r, "worker_id", None) == "default-0" for r in caplog.records)


async def test_stats_snapshot_is_typed_and_immutable() -> None:
    async with snakepit.open_pool(size=2, name="general") as pool:
        await pool.execute("ping")
        stats = pool.stats()
        assert isinstance(stats, snakepit.PoolStats)
        assert [w.id for w in stats.workers] == ["general-0", "general-1"]
        assert all(isinstance(w, snakepit.WorkerStats) and w.state == "ready"
                   for w in stats.workers)
        assert all(w.pid is not None and w.restarts == 0 for w in stats.workers)
        assert (stats.calls, stats.succeeded, stats.failed) == (1, 1, 0)
        assert stats.queue_depth == 0 and stats.in_flight == 0
        with pytest.raises(AttributeError):
            stats.calls = 5  # type: ignore[misc]


async def test_calls_after_close_raise_pool_closed() -> None:
    async with snakepit.open_pool(size=1) as pool:
        pass
    with pytest.raises(snakepit.PoolClosed):
        await pool.execute("ping")


async def test_invalid_timeout_is_rejected() -> None:
    async with snakepit.open_pool(size=1) as pool:
        with pytest.raises(snakepit.ConfigError, match="timeout: must be a number > 0"):
            await pool.execute("ping", timeout=0)
        with pytest.raises(snakepit.ConfigError):
            await pool.execute("ping", timeout=float("nan"))


async def test_stats_report_latency_percentiles() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        empty = pool.stats()
        assert (empty.latency_p50, empty.latency_p95, empty.latency_p99) == (None, None, None)
        for _ in range(20):
            await pool.execute("echo", 1)
        await pool.execute("sleep", {"seconds": 0.2})  # one slow call: the tail
        stats = pool.stats()
        assert stats.latency_p50 is not None and stats.latency_p99 is not None
        assert 0 < stats.latency_p50 < 0.1 <= 0.2 <= stats.latency_p99
        assert stats.latency_p50 <= stats.latency_p95 <= stats.latency_p99  # type: ignore[operator]


def test_percentiles_nearest_rank() -> None:
    from snakepit.pool.stats import percentiles

    assert percentiles(range(101), (0.5, 0.95, 0.99)) == (50, 95, 99)
    assert percentiles([3.0], (0.5, 0.99)) == (3.0, 3.0)
    assert percentiles([], (0.5,)) == (None,)
