"""Large buffers through shared-memory segments: both ways, and never left behind."""

from __future__ import annotations

import glob
import json
import mmap
import os
from pathlib import Path

import pytest
import trio

import snakepit
from snakepit.process.registry import reap_orphans
from snakepit.protocol import shm
from snakepit.protocol.segments import HUGE_COPY
from snakepit.worker.run import registry
from tests.conftest import chaos_config, started, support_env
from tests.process.test_shutdown import wait_gone

pytestmark = pytest.mark.skipif(not shm.available(), reason="no writable /dev/shm")

THRESHOLD = 1 << 20


def shm_config(**overrides: object) -> snakepit.PoolConfig:
    options: dict[str, object] = {"size": 1, "handler": "shm_handler:SharedMemoryHandler",
                                  "env": support_env(), "shm_threshold": THRESHOLD}
    options.update(overrides)
    return chaos_config(**options)


def segments(config: snakepit.PoolConfig) -> list[str]:
    """This run's segments in /dev/shm."""
    run_id = registry(config).run_id
    return glob.glob(os.path.join(shm.SEGMENT_DIR, f"snakepit-{run_id}-*"))


def of_process(config: snakepit.PoolConfig, pid: int) -> list[str]:
    """This run's segments created by process ``pid`` or by the host for it."""
    run_id = registry(config).run_id
    return [path for path in segments(config)
            if os.path.basename(path).startswith((f"snakepit-{run_id}-{pid}-",
                                                  f"snakepit-{run_id}-{os.getpid()}-{pid}-"))]


def host_codec(pool: snakepit.Pool) -> shm.SharedMemoryCodec:
    codec = pool.workers()[0].shared_memory
    assert codec is not None, "the worker did not take up shared memory"
    return codec


async def test_large_bytes_go_both_ways_through_shared_memory() -> None:
    config = shm_config()
    async with snakepit.open_pool(config) as pool:
        blob = os.urandom(3 * THRESHOLD)
        assert await pool.execute("echo", blob) == blob
        # out of band both ways: the host wrote one segment and read one
        assert (host_codec(pool).sent, host_codec(pool).received) == (1, 1)
        assert await pool.execute("segment_counts") == {"received": 1, "sent": 1, "created": 0}
        # nested in a map, and a memoryview of any contiguous buffer, travel too
        view = memoryview(bytearray(blob))
        assert await pool.execute("echo", {"data": view, "n": 1}) == {"data": blob, "n": 1}
        assert host_codec(pool).sent == 2
    assert segments(config) == []  # nothing outlives the pool


async def test_segments_are_reused_both_ways() -> None:
    config = shm_config()
    async with snakepit.open_pool(config) as pool:
        blob = os.urandom(3 * THRESHOLD)
        for _ in range(10):
            assert await pool.execute("echo", blob) == blob
        codec = host_codec(pool)
        assert (codec.sent, codec.received) == (10, 10)
        # one segment went back and forth: created once by the host, never by the worker
        assert codec.pool.created == 1
        assert (await pool.execute("segment_counts"))["created"] == 0
        assert len(segments(config)) == 1
    assert segments(config) == []


async def test_a_message_of_many_buffers_reuses_all_its_segments() -> None:
    # a frame of many large columns: every one of its segments comes back for reuse,
    # not only the first few (a cap of four free segments made the rest fresh files,
    # page faults and all, on every round trip)
    config = shm_config()
    async with snakepit.open_pool(config) as pool:
        blobs = [os.urandom(THRESHOLD + i) for i in range(12)]
        for _ in range(5):
            assert await pool.execute("echo", blobs) == blobs
        codec = host_codec(pool)
        assert (codec.sent, codec.received) == (60, 60)
        assert codec.pool.created == 12
        assert (await pool.execute("segment_counts"))["created"] == 0
    assert segments(config) == []


async def test_a_received_view_frees_its_segment_for_the_callers_next_call() -> None:
    # The caller's next call writes into the segment its last answer came in. Trio's run
    # loop keeps a task's last wake-up value until it runs another task, so a view
    # delivered as that value was still alive when the same task sent again: the first
    # echo after the warm-up wrote into a fresh segment (64 MiB: 63 ms instead of 13).
    config = shm_config()
    async with snakepit.open_pool(config) as pool:
        blob = memoryview(os.urandom(2 * THRESHOLD))
        for _ in range(4):
            await pool.execute("echo", blob)  # no checkpoint between the calls
        codec = host_codec(pool)
        assert (codec.sent, codec.received) == (4, 4)
        assert codec.pool.created == 1  # the first call's; then the answers' segments
    assert segments(config) == []


async def test_by_default_anything_over_a_pipe_buffer_goes_out_of_band() -> None:
    # 64 KiB: a larger frame takes several writes and wake-ups through the pipe
    # (512 KiB echoed: ~2.4 ms in band against ~0.26 ms through a segment)
    config = chaos_config(size=1, handler="shm_handler:SharedMemoryHandler",
                          env=support_env())
    assert config.shm_threshold == 64 << 10
    async with snakepit.open_pool(config) as pool:
        small, medium = os.urandom((64 << 10) - 1), os.urandom(200 << 10)
        assert await pool.execute("echo", small) == small
        assert (host_codec(pool).sent, host_codec(pool).received) == (0, 0)
        assert await pool.execute("echo", medium) == medium
        assert (host_codec(pool).sent, host_codec(pool).received) == (1, 1)
        # sized in 64 KiB steps below 1 MiB: no 1 MiB file for a 200 KiB buffer
        assert [os.path.getsize(path) for path in segments(config)] == [256 << 10]
    assert segments(config) == []


async def test_a_streams_chunks_stay_in_band() -> None:
    # one way: a segment the host received would never come back to the worker, so
    # every chunk would be a fresh file (64 KiB chunks: 0.72 GB/s, against 1.76 GB/s
    # through the pipe); a call's large result still goes out of band
    config = chaos_config(size=1, env=support_env(), shm_threshold=THRESHOLD)
    async with snakepit.open_pool(config) as pool:
        async with pool.stream("blobs", {"n": 5, "size": 3 * THRESHOLD}) as stream:
            chunks = [chunk async for chunk in stream]
        assert chunks == [b"x" * (3 * THRESHOLD)] * 5
        assert host_codec(pool).received == 0
        blob = os.urandom(3 * THRESHOLD)
        assert await pool.execute("echo", blob) == blob
        assert host_codec(pool).received == 1
    assert segments(config) == []


async def test_large_bytes_are_read_out_into_their_own_bytes() -> None:
    # past HUGE_COPY the copy out goes straight into a new bytes object
    config = shm_config()
    async with snakepit.open_pool(config) as pool:
        blob = os.urandom(HUGE_COPY + 12345)
        for _ in range(3):  # the same segments each time: the copies must not alias
            echoed = await pool.execute("echo", blob)
            assert type(echoed) is bytes and echoed == blob and hash(echoed) == hash(blob)
        other = os.urandom(len(blob))
        assert await pool.execute("echo", other) == other
        assert echoed == blob  # an earlier result is untouched by later traffic
    from snakepit.protocol import segments as segment_module  # the host took the fast path

    assert isinstance(segment_module._maker, segment_module._BytesMaker)


async def test_views_arrive_for_views_and_bytes_for_bytes() -> None:
    config = shm_config()
    async with snakepit.open_pool(config) as pool:
        blob = os.urandom(2 * THRESHOLD)
        assert await pool.execute("type_of", blob) == "bytes"
        assert await pool.execute("type_of", bytearray(blob)) == "memoryview"
        echoed = await pool.execute("echo", memoryview(blob))
        assert type(echoed) is memoryview and echoed.readonly and echoed == blob
        copied = await pool.execute("echo", blob)
        assert type(copied) is bytes and copied == blob
        assert isinstance(echoed.obj, mmap.mmap)  # the segment itself: no copy out
        del echoed
    assert segments(config) == []


async def test_the_threshold_is_honoured() -> None:
    config = shm_config()
    async with snakepit.open_pool(config) as pool:
        assert await pool.execute("length", b"x" * (THRESHOLD - 1)) == THRESHOLD - 1
        assert host_codec(pool).sent == 0  # below: in the frame
        assert await pool.execute("length", b"x" * THRESHOLD) == THRESHOLD
        assert host_codec(pool).sent == 1  # at the threshold: out of band
        assert await pool.execute("segment_counts") == {"received": 1, "sent": 0, "created": 0}


async def test_no_threshold_means_no_shared_memory() -> None:
    async with snakepit.open_pool(shm_config(shm_threshold=None)) as pool:
        assert pool.workers()[0].shared_memory is None
        assert await pool.execute("length", b"x" * (2 * THRESHOLD)) == 2 * THRESHOLD
        assert await pool.execute("segment_counts") == {"received": -1, "sent": -1}


async def test_segments_are_released_after_a_handler_error() -> None:
    config = shm_config()
    async with snakepit.open_pool(config) as pool:
        with pytest.raises(snakepit.RemoteError, match="refusing"):
            await pool.execute("reject", b"x" * (2 * THRESHOLD))
        assert host_codec(pool).sent == 1
        assert len(segments(config)) == 1  # kept by the worker for its next buffer
    assert segments(config) == []


async def test_arguments_a_crashed_worker_never_read_are_released() -> None:
    config = shm_config(pipeline_depth=2)
    async with snakepit.open_pool(config) as pool, trio.open_nursery() as nursery:
        worker = pool.workers()[0]
        # the worker sleeps in its handler and reads nothing meanwhile
        await started(pool, nursery, "sleep", {"seconds": 60})
        moved = trio.Event()
        lengths: list[int] = []

        async def pipelined() -> None:
            # it never started: it runs on the replacement, through a segment of its own
            lengths.append(await pool.execute("length", b"x" * (2 * THRESHOLD)))
            moved.set()

        nursery.start_soon(pipelined)
        await trio.testing.wait_all_tasks_blocked()
        assert len(segments(config)) == 1  # written, sent, not read
        os.kill(worker.pid, 9)
        await moved.wait()
        assert lengths == [2 * THRESHOLD]
        await wait_gone(worker.pid)
        await pool.wait_ready()
        assert of_process(config, worker.pid) == []  # the dead worker's, and ours for it
    assert segments(config) == []


async def test_results_a_crashed_worker_wrote_are_released() -> None:
    config = shm_config()
    async with snakepit.open_pool(config) as pool:
        crashed = pool.workers()[0].pid
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("crash_holding_a_segment", {"size": 2 * THRESHOLD})
        await wait_gone(crashed)
        await pool.wait_ready()
        assert of_process(config, crashed) == []
    assert segments(config) == []


def test_the_reaper_removes_the_segments_of_a_dead_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    # pid 1's start time is not 1: this run is dead
    (runs / "1-1.json").write_text(json.dumps({"run_id": "1-1", "host_pid": 1,
                                               "host_start": 1, "workers": []}))
    dead = Path(shm.SEGMENT_DIR, "snakepit-1-1-4242-0")
    other = Path(shm.SEGMENT_DIR, "snakepit-1-10-4242-0")  # another run's, "1-10"
    for path in (dead, other):
        path.write_bytes(b"left behind")
    try:
        reap_orphans(tmp_path)
        assert not dead.exists()
        assert other.exists()
    finally:
        for path in (dead, other):
            path.unlink(missing_ok=True)
