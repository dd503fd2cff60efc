"""The idle limit of streams: a consumer that stops reading must not pin its worker."""

from pathlib import Path

import pytest
import trio

import snakepit
from tests.conftest import chaos_config


async def test_a_stalled_consumer_frees_its_worker_after_the_idle_limit(tmp_path: Path
                                                                        ) -> None:
    """A pool of one worker: the next call can only run once the stalled stream was cut."""
    marker = tmp_path / "closed"
    limit = 0.2
    # a cancel_grace no test waits out: the same pid means the generator was closed
    config = chaos_config(size=1, stream_window=4, stream_idle_timeout=limit,
                          cancel_grace=60)
    async with snakepit.open_pool(config) as pool:
        pid = await pool.execute("pid")
        async with pool.stream("count", {"n": 10**9, "marker": str(marker)}) as chunks:
            assert await chunks.__anext__() == 0
            stalled_at = trio.current_time()
            # the consumer takes nothing more; the worker's generator waits for credit
            with trio.fail_after(30):  # only a safety net: without the limit, forever
                assert await pool.execute("pid") == pid
            assert trio.current_time() - stalled_at >= limit
            assert marker.read_text() == str(pid)  # the generator's finally ran
            assert chunks.buffered == 0  # what it had not taken was dropped
            with pytest.raises(snakepit.StreamIdleTimeout, match="took no chunk") as info:
                await chunks.__anext__()
            assert not info.value.retryable
            assert isinstance(info.value, snakepit.SnakepitError)
            # it keeps saying so: the stream is over
            with pytest.raises(snakepit.StreamIdleTimeout):
                await chunks.__anext__()
        stats = pool.stats()
        assert stats.in_flight == 0
        assert stats.workers[0].restarts == 0


async def test_a_consumer_that_keeps_reading_slowly_is_not_cut() -> None:
    """Pauses below the limit between reads, adding up to well past it."""
    limit = 1.0
    config = chaos_config(size=1, stream_window=2, stream_idle_timeout=limit)
    async with snakepit.open_pool(config) as pool:
        received = []
        started = trio.current_time()
        async with pool.stream("count", {"n": 12}) as chunks:
            async for chunk in chunks:
                received.append(chunk)
                await trio.sleep(limit / 10)  # the consumer's own pace is under test
        assert received == list(range(12))
        assert trio.current_time() - started > limit  # longer than one limit in all


async def test_a_slow_producer_is_not_cut() -> None:
    """Waiting inside a read is not idling: each chunk takes longer than the limit."""
    limit = 0.3
    config = chaos_config(size=1, stream_idle_timeout=limit)
    async with snakepit.open_pool(config) as pool:
        async with pool.stream("count", {"n": 2, "delay": 2 * limit}) as chunks:
            received = [chunk async for chunk in chunks]
        assert received == [0, 1]


async def test_no_idle_limit_when_it_is_none() -> None:
    """``None`` disables the limit: a stalled consumer keeps its worker (here the only
    one, and pipeline_depth 1 keeps the next call in the host's queue)."""
    config = chaos_config(size=1, stream_window=2, stream_idle_timeout=None,
                          pipeline_depth=1)
    async with snakepit.open_pool(config) as pool:
        async with pool.stream("count", {"n": 10**9}) as chunks:
            assert await chunks.__anext__() == 0
            with pytest.raises(snakepit.QueueTimeout):
                await pool.execute("pid", timeout=0.5)
            assert await chunks.__anext__() == 1  # the stream is still alive


@pytest.mark.parametrize("value", [0, -1.0, "30", True])
def test_stream_idle_timeout_must_be_positive_or_none(value: object) -> None:
    with pytest.raises(snakepit.ConfigError, match="stream_idle_timeout"):
        snakepit.PoolConfig(stream_idle_timeout=value)  # type: ignore[arg-type]


def test_stream_idle_timeout_defaults_to_thirty_seconds() -> None:
    assert snakepit.PoolConfig().stream_idle_timeout == 30.0
    assert snakepit.PoolConfig.from_dict({"stream_idle_timeout": None}
                                         ).stream_idle_timeout is None
