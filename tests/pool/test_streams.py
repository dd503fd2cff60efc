"""Streaming calls: chunks, credit-based flow control, early exit, crashes."""

from pathlib import Path

import pytest
import trio

import snakepit
from tests.conftest import chaos_config, hold_open, open_gate, support_env


@pytest.mark.parametrize("codec", ["msgpack", "json"])
async def test_stream_delivers_every_chunk_in_order(codec: str) -> None:
    async with snakepit.open_pool(chaos_config(size=1, codec=codec)) as pool:
        async with pool.stream("count", {"n": 500}) as chunks:
            received = [chunk async for chunk in chunks]
        assert received == list(range(500))
        assert await pool.execute("echo", "after") == "after"
        assert pool.stats().in_flight == 0


async def test_slow_consumer_bounds_buffering_on_a_long_stream() -> None:
    window = 16
    async with snakepit.open_pool(chaos_config(size=1, stream_window=window)) as pool:
        async with pool.stream("count", {"n": 10_000}) as chunks:
            expected = 0
            async for chunk in chunks:
                assert chunk == expected
                expected += 1
                if expected % 1000 == 0:
                    # a slow consumer: let the worker run as far ahead as it may
                    await trio.sleep(0.05)
                    assert chunks.buffered <= window
            assert expected == 10_000
            assert chunks.high_water <= window  # never more than the credit window
            assert chunks.high_water >= window // 2  # and the window was actually used


async def test_leaving_early_closes_the_generator_and_the_worker_stays(tmp_path: Path
                                                                      ) -> None:
    marker = tmp_path / "closed"
    # a cancel_grace no test waits out: the same pid means the generator was closed
    async with snakepit.open_pool(chaos_config(size=1, cancel_grace=60)) as pool:
        pid = await pool.execute("pid")
        async with pool.stream("count", {"n": 1_000_000, "marker": str(marker)}) as chunks:
            async for chunk in chunks:
                if chunk == 10:
                    break
        # the next call runs on the same process, after the generator's finally ran
        assert await pool.execute("pid") == pid
        assert marker.read_text() == str(pid)
        assert pool.stats().workers[0].restarts == 0


async def test_cancelling_the_consumer_cancels_the_stream(tmp_path: Path) -> None:
    """No deadline: only the cancel frame can stop this endless stream, and the next
    call can only run on the serial worker once it has."""
    marker = tmp_path / "closed"
    async with snakepit.open_pool(chaos_config(size=1, cancel_grace=60)) as pool:
        pid = await pool.execute("pid")
        with trio.CancelScope() as scope:
            async with pool.stream("count", {"n": 10**9, "marker": str(marker),
                                             "delay": 0.001}) as chunks:
                async for _ in chunks:
                    scope.cancel()  # the generator has started: a chunk came from it
        assert scope.cancelled_caught
        with trio.fail_after(30):  # only a safety net
            assert await pool.execute("pid") == pid
        assert marker.read_text() == str(pid)  # its finally ran


async def test_crash_mid_stream_delivers_what_arrived_then_worker_crashed() -> None:
    async with snakepit.open_pool(chaos_config(size=1, stream_window=64)) as pool:
        received = []
        with pytest.raises(snakepit.WorkerCrashed) as info:
            async with pool.stream("stream_then_crash", {"n": 50}) as chunks:
                async for chunk in chunks:
                    received.append(chunk)
        assert received == list(range(50))  # nothing duplicated, nothing dropped
        assert info.value.exit_code == 7


async def test_error_mid_stream_is_remote_error_after_the_chunks() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        received = []
        with pytest.raises(snakepit.RemoteError, match="stream broke"):
            async with pool.stream("stream_then_raise", {"n": 5}) as chunks:
                async for chunk in chunks:
                    received.append(chunk)
        assert received == [0, 1, 2, 3, 4]


async def test_plain_command_streams_as_one_chunk_and_stream_collects_as_list() -> None:
    async with snakepit.open_pool(size=1) as pool:
        async with pool.stream("echo", {"x": 1}) as chunks:
            assert [c async for c in chunks] == [{"x": 1}]
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        assert await pool.execute("count", {"n": 3}) == [0, 1, 2]


async def test_stream_deadline_is_worker_timeout() -> None:
    async with snakepit.open_pool(chaos_config(size=1, cancel_grace=60)) as pool:
        pid = await pool.execute("pid")
        with pytest.raises(snakepit.WorkerTimeout):
            async with pool.stream("count", {"n": 10**9, "delay": 0.01},
                                   timeout=0.3) as chunks:
                async for _ in chunks:
                    pass
        assert await pool.execute("pid") == pid  # the generator was closed, no kill


async def test_streams_and_calls_share_a_concurrent_workers_pipe() -> None:
    from tests.conftest import support_env

    config = chaos_config(size=1, handler="barrier_handler:ThreadedChaosHandler",
                          env=support_env())
    async with snakepit.open_pool(config) as pool:
        async with pool.stream("count", {"n": 200}) as chunks:
            got = []
            async for chunk in chunks:
                got.append(chunk)
                if chunk == 100:
                    assert await pool.execute("echo", "between") == "between"
        assert got == list(range(200))


async def test_progress_reaches_the_callback() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        seen: list[tuple[float, float | None, str | None]] = []
        result = await pool.execute("progress", {"steps": 3},
                                    on_progress=lambda *event: seen.append(event))
        assert result == 3
        assert seen == [(1.0, 3.0, "step 1"), (2.0, 3.0, "step 2"), (3.0, 3.0, "step 3")]


async def test_a_chunk_that_cannot_travel_ends_the_stream_not_the_worker() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        pid = await pool.execute("pid")
        received = []
        with pytest.raises(snakepit.PayloadError, match="cannot be sent"):
            async with pool.stream("stream_unencodable", {"n": 3}) as chunks:
                async for chunk in chunks:
                    received.append(chunk)
        assert received == [0, 1, 2]
        assert await pool.execute("pid") == pid  # no protocol error, no restart
        assert pool.stats().restarts == 0


async def test_stream_whose_deadline_passes_in_a_busy_workers_pipe_is_queue_timeout(
        tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # cancel_grace 0: a stream thought to be running would get the worker killed at once
    async with snakepit.open_pool(chaos_config(size=1, cancel_grace=0)) as pool:
        pid = await pool.execute("pid")
        results: list[str] = []
        async with trio.open_nursery() as nursery:
            await hold_open(pool, nursery, gate, results)
            with pytest.raises(snakepit.QueueTimeout):
                async with pool.stream("count", {"n": 10}, timeout=0.2) as chunks:
                    async for _ in chunks:
                        pass
            open_gate(gate)
        assert results == ["done"]
        assert await pool.execute("pid") == pid
        assert pool.stats().restarts == 0


@pytest.mark.parametrize("handler", ["serial", "threaded"])
async def test_credit_that_arrives_at_once_is_never_missed(handler: str) -> None:
    """With a window of one the consumer's credit races the worker's wait for it (it
    may be read by the poll just before the wait, or applied just before a threaded
    wait takes its lock); the worker must still see it, chunk after chunk."""
    options: dict[str, object] = {"size": 1}
    if handler == "threaded":
        options.update(handler="barrier_handler:ThreadedChaosHandler", env=support_env())
    async with snakepit.open_pool(chaos_config(**options)) as pool:
        with trio.fail_after(60):  # a missed credit would stall the stream for good
            async with pool.stream("count", {"n": 300}, window=1) as chunks:
                assert [chunk async for chunk in chunks] == list(range(300))
