"""Pools under trio's MockClock: waits on real processes count real time.

The application's timers (a call's timeout, session TTLs) stay on Trio's clock, so a
test can jump them; the handshake, grace periods and heartbeats do not, so a jump
neither fails a start nor reads as a worker's silence. Under an autojumping clock
(pytest-trio's ``autojump_clock``) the clock runs at real speed while the pool waits on
a worker and jumps as usual while it is idle (see ``snakepit._realtime``).
"""

from __future__ import annotations

import time

import pytest
import trio
from trio.testing import MockClock

import snakepit
from tests.conftest import chaos_config, child_pids, started, wall_clock_limit


async def test_the_issue_example_passes_under_autojump(autojump_clock: MockClock) -> None:
    with wall_clock_limit(30):
        async with snakepit.open_pool(snakepit.PoolConfig(size=1)) as pool:
            assert await pool.execute("echo", 1, timeout=5) == 1


async def test_autojump_waits_for_a_slow_call_and_still_jumps_when_idle(
        autojump_clock: MockClock) -> None:
    with wall_clock_limit(30):
        async with snakepit.open_pool(chaos_config(size=1)) as pool:
            pid = await pool.execute("pid")
            # 0.3 s of real work under a 5 s timeout: the clock must not jump past it
            assert await pool.execute("sleep", {"seconds": 0.3}, timeout=5) == 0.3
            # idle: an hour passes at once -- and no heartbeat or health check counts
            # it as the worker's silence (they count real time)
            before, real = trio.current_time(), time.monotonic()
            await trio.sleep(3600)
            assert trio.current_time() - before == pytest.approx(3600, abs=1)
            assert time.monotonic() - real < 5
            assert await pool.execute("pid", timeout=5) == pid
    # the test's clock settings are back
    assert (autojump_clock.rate, autojump_clock.autojump_threshold) == (0, 0)


async def test_under_autojump_a_stuck_call_times_out_in_real_time(
        autojump_clock: MockClock) -> None:
    with wall_clock_limit(30):
        async with snakepit.open_pool(chaos_config(size=1, cancel_grace=0.2)) as pool:
            pid = await pool.execute("pid")
            gone = trio.Event()
            handler = snakepit.telemetry.attach(
                "worker.exited", lambda _e, _m, meta: meta.get("pid") == pid and gone.set())
            try:
                real = time.monotonic()
                with pytest.raises(snakepit.WorkerTimeout):
                    await pool.execute("sleep", {"seconds": 30}, timeout=0.5)
                assert 0.4 < time.monotonic() - real < 10
                await gone.wait()  # killed after cancel_grace (real time), then replaced
            finally:
                snakepit.telemetry.detach(handler)
            await pool.wait_ready()
            assert await pool.execute("pid", timeout=5) != pid


async def test_a_plain_mock_clock_jumps_do_not_read_as_silence(
        mock_clock: MockClock) -> None:
    # heartbeat and health checks on (the defaults); the test alone moves the clock
    with wall_clock_limit(30):
        async with snakepit.open_pool(chaos_config(size=1)) as pool:
            pid = await pool.execute("pid")
            mock_clock.jump(3600)  # far past heartbeat_timeout and health checks
            await trio.testing.wait_all_tasks_blocked()
            assert await pool.execute("pid") == pid
            assert pool.stats().workers[0].restarts == 0


async def test_a_plain_mock_clock_still_ends_a_silent_start_in_real_time(
        mock_clock: MockClock) -> None:
    config = snakepit.PoolConfig(size=1, startup_timeout=1.0, kill_timeout=0.5,
                                 command=("/bin/sh", "-c", "exec sleep 60"))
    real = time.monotonic()
    with wall_clock_limit(30):
        with pytest.raises(snakepit.WorkerStartupError, match="startup_timeout"):
            async with snakepit.open_pool(config):
                pytest.fail("the pool must not open")
    assert time.monotonic() - real < 15
    assert mock_clock.current_time() == 0  # nothing jumped it
    assert not child_pids()


async def test_a_plain_mock_clock_shutdown_ladder_is_real(mock_clock: MockClock) -> None:
    # a busy worker that ignores SIGTERM: grace, SIGTERM and SIGKILL each end in real
    # time, though nothing moves the clock
    config = chaos_config(size=1, shutdown_grace=0.2, kill_timeout=0.2)
    real = time.monotonic()
    with wall_clock_limit(30):
        async with trio.open_nursery() as nursery:
            async with snakepit.open_pool(config) as pool:
                await pool.execute("ignore_term")
                await started(pool, nursery, "sleep", {"seconds": 3600})
    assert time.monotonic() - real < 15
    assert mock_clock.current_time() == 0
    assert not child_pids()


async def test_under_autojump_a_silent_start_gets_its_real_startup_timeout(
        autojump_clock: MockClock) -> None:
    # before: the clock jumped 30 s at once and the start failed in 0.46 s, blaming the
    # worker; now the handshake gets its full second, and the clock is given back
    config = snakepit.PoolConfig(size=1, startup_timeout=1.0, kill_timeout=0.5,
                                 command=("/bin/sh", "-c", "exec sleep 60"))
    real = time.monotonic()
    with wall_clock_limit(30):
        with pytest.raises(snakepit.WorkerStartupError, match="startup_timeout"):
            async with snakepit.open_pool(config):
                pytest.fail("the pool must not open")
    assert 1.0 <= time.monotonic() - real < 15
    assert (autojump_clock.rate, autojump_clock.autojump_threshold) == (0, 0)
    before, real = trio.current_time(), time.monotonic()
    await trio.sleep(100)  # it autojumps again
    assert trio.current_time() - before == pytest.approx(100)
    assert time.monotonic() - real < 5
    assert not child_pids()
