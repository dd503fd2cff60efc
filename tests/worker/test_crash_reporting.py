"""What a slot says about crashes: its state, its log lines, and how long it waits.

Backoff rules run on trio's MockClock (moved by the test); the log and state tests on
real crashes of real workers.
"""

import logging
import os
import signal
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

import snakepit
from snakepit.worker.crashlog import RateLimitedLog, describe_exit
from tests.conftest import chaos_config, mock_clock_config, wall_clock_limit


async def test_a_slot_whose_worker_just_exited_is_dead_with_no_pid() -> None:
    # Issue 15 found state "running" with pid None here: a state WorkerStats never named.
    seen: list[snakepit.WorkerStats] = []
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        handle = snakepit.telemetry.attach(
            "worker.exited", lambda *_: seen.append(pool.stats().workers[0]))
        try:
            with pytest.raises(snakepit.WorkerCrashed):
                await pool.execute("crash", {"code": 3})
            await pool.wait_ready()
        finally:
            snakepit.telemetry.detach(handle)
        assert [(w.state, w.pid) for w in seen] == [(snakepit.SlotState.DEAD, None)]
        assert pool.stats().workers[0].state is snakepit.SlotState.READY
    assert pool.stats().workers[0].state is snakepit.SlotState.STOPPED


def test_every_slot_state_is_documented() -> None:
    states = list(snakepit.SlotState)
    assert {s.value for s in states} == {"starting", "ready", "stopping", "dead", "restarting",
                                         "waiting", "failed", "stopped"}
    for state in states:  # attribute docstrings are not introspectable: read the source
        assert state.value in (snakepit.WorkerStats.__doc__ or "") + _state_field_doc()
    # the enum is a str: code written against the old plain strings keeps working
    ready: str = snakepit.SlotState.READY
    assert ready == "ready" and f"{ready}" == "ready"


def _state_field_doc() -> str:
    import inspect

    from snakepit.pool import stats

    source = inspect.getsource(stats.WorkerStats)
    return source[source.index("state: SlotState"):source.index("calls_served:")]


async def test_crashes_and_restarts_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="snakepit.supervisor")
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        pid = pool.workers()[0].pid
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("crash", {"code": 3})
        await pool.wait_ready()
        new_pid = pool.workers()[0].pid
    lines = [(r.levelno, r.getMessage()) for r in caplog.records
             if r.name == "snakepit.supervisor"]
    crash = [m for level, m in lines if level == logging.WARNING and "crashed" in m]
    assert len(crash) == 1
    assert f"worker default-0 (pid {pid}) crashed (exit code 3)" in crash[0]
    assert "1 lost; restarting in" in crash[0]
    assert (logging.INFO, f"worker default-0 restarted (pid {new_pid}), restart 1") in lines


async def test_crash_lines_are_rate_limited(mock_clock: MockClock,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.crashlog")
    limited = RateLimitedLog(logging.getLogger("test.crashlog"), burst=3, period=60)
    written = [limited.log(logging.WARNING, "crash %d", n) for n in range(5)]
    assert written == [True, True, True, False, False]
    mock_clock.jump(59.9)
    assert not limited.log(logging.WARNING, "crash 5")
    mock_clock.jump(0.1)
    assert limited.log(logging.WARNING, "crash 6")
    assert [r.getMessage() for r in caplog.records] == [
        "crash 0", "crash 1", "crash 2",
        "3 more crash and restart messages were suppressed in the last 60s", "crash 6"]


def test_exit_descriptions() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(None) == "exit status unknown"


async def restart_delays(pool: snakepit.Pool, clock: MockClock, crash: Any,
                         count: int) -> list[float]:
    """Crash the pool's only worker ``count`` times with ``crash(pool)``; return how long
    (on the mock clock) each replacement waited before it was started."""
    started: list[float] = []
    handle = snakepit.telemetry.attach(
        "worker.restarted", lambda *_: started.append(trio.current_time()))
    delays: list[float] = []
    try:
        for _ in range(count):
            await crash(pool)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.stats().workers[0].state is snakepit.SlotState.RESTARTING
            crashed_at = trio.current_time()
            while len(started) < len(delays) + 1:  # step the clock until the restart
                clock.jump(0.25)
                await trio.testing.wait_all_tasks_blocked()
            delays.append(started[-1] - crashed_at)
            await pool.wait_ready()
    finally:
        snakepit.telemetry.detach(handle)
    return delays


async def crash_in_a_call(pool: snakepit.Pool) -> None:
    with pytest.raises(snakepit.WorkerCrashed):
        await pool.execute("crash")


async def die_before_any_call(pool: snakepit.Pool) -> None:
    worker = pool.workers()[0]
    gone = trio.Event()
    handle = snakepit.telemetry.attach("worker.exited", lambda *_: gone.set())
    try:
        os.kill(worker.pid, signal.SIGKILL)
        await gone.wait()
    finally:
        snakepit.telemetry.detach(handle)


RELAXING = snakepit.RestartPolicy(max_restarts=100, backoff_initial=1, backoff_max=100,
                                  jitter=0)


async def test_a_worker_that_crashes_serving_a_call_is_restarted_without_growing_backoff(
        mock_clock: MockClock) -> None:
    # Issue 21: the backoff kept growing under occasional crashing requests.
    with wall_clock_limit(60):
        async with snakepit.open_pool(mock_clock_config(size=1, restart=RELAXING)) as pool:
            assert await restart_delays(pool, mock_clock, crash_in_a_call, 4) == [1, 1, 1, 1]


async def test_a_worker_that_dies_before_any_call_backs_off_exponentially(
        mock_clock: MockClock) -> None:
    with wall_clock_limit(60):
        async with snakepit.open_pool(mock_clock_config(size=1, restart=RELAXING)) as pool:
            assert await restart_delays(pool, mock_clock, die_before_any_call, 4) == [
                1, 2, 4, 8]
