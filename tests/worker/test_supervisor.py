"""Crashes: exactly the calls in flight fail; slots restart with backoff, within limits."""

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import snakepit
from snakepit.worker.supervisor import Slot
from tests.conftest import chaos_config, support_env


async def test_crash_fails_only_the_call_in_flight_and_slot_restarts() -> None:
    async with snakepit.open_pool(chaos_config(size=2)) as pool:
        results: list[float] = []
        async with trio.open_nursery() as nursery:
            async def long_call() -> None:
                results.append(await pool.execute("nap", {"seconds": 1.0}))

            nursery.start_soon(long_call)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(snakepit.WorkerCrashed) as info:
                await pool.execute("crash", {"code": 3})
        assert results == [1.0]  # the other worker's call was untouched
        assert info.value.exit_code == 3
        assert info.value.signal is None
        assert info.value.retryable is False
        await pool.wait_ready()
        stats = pool.stats()
        assert stats.crashes == 1
        assert stats.restarts == 1
        assert sorted(w.restarts for w in stats.workers) == [0, 1]
        assert await pool.execute("echo", "alive") == "alive"


async def crash_with_a_call_queued(pool: snakepit.Pool, gate: Path, queued: str,
                                   **options: Any) -> tuple[list[BaseException], Any]:
    """Fill the pool's only worker with calls that block, send ``queued`` into its pipe
    behind them, then SIGKILL the worker. Returns the blocked calls' errors and what
    the queued call raised or returned."""
    worker = pool.workers()[0]
    running: list[BaseException] = []
    queued_outcome: list[Any] = []
    async with trio.open_nursery() as nursery:
        async def block() -> None:
            try:
                await pool.execute("block_until", {"path": str(gate)})
            except snakepit.WorkerCrashed as exc:
                running.append(exc)

        async def send_queued() -> None:
            try:
                queued_outcome.append(await pool.execute(queued, **options))
            except snakepit.SnakepitError as exc:
                queued_outcome.append(exc)

        for _ in range(worker.capacity):
            nursery.start_soon(block)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send_queued)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.stats().in_flight == worker.capacity + 1  # one waits in the pipe
        os.kill(worker.pid, signal.SIGKILL)
    return running, queued_outcome[0]


@pytest.mark.parametrize("handler", ["serial", "threaded"])
async def test_a_call_queued_behind_a_crash_runs_on_the_replacement(
        tmp_path: Path, handler: str) -> None:
    """It never started, so it runs elsewhere -- with no retry policy at all."""
    options: dict[str, Any] = {"size": 1}
    if handler == "threaded":
        options.update(handler="barrier_handler:ThreadedChaosHandler", env=support_env())
    async with snakepit.open_pool(chaos_config(**options)) as pool:
        capacity = pool.workers()[0].capacity
        old_pid = pool.workers()[0].pid
        running, queued = await crash_with_a_call_queued(pool, tmp_path / "gate", "pid")
        assert len(running) == capacity
        assert all(type(exc) is snakepit.WorkerCrashed and not exc.retryable
                   and exc.signal == signal.SIGKILL for exc in running)
        assert isinstance(queued, int) and queued != old_pid  # ran on the replacement


async def test_a_call_given_back_fails_before_start_once_its_deadline_passes(
        tmp_path: Path) -> None:
    """No worker takes it before its deadline (the replacement waits out a long
    backoff): the retryable WorkerCrashedBeforeStart, not a timeout of a call that ran."""
    slow = snakepit.RestartPolicy(backoff_initial=30.0, backoff_max=30.0, jitter=0.0)
    async with snakepit.open_pool(chaos_config(size=1, restart=slow)) as pool:
        _, queued = await crash_with_a_call_queued(pool, tmp_path / "gate", "crash",
                                                   timeout=1.0)
        assert isinstance(queued, snakepit.WorkerCrashedBeforeStart)
        assert isinstance(queued, snakepit.WorkerCrashed)  # still caught as a crash
        assert queued.retryable is True
        assert "given back unstarted" in str(queued)


async def test_a_retry_policy_is_not_needed_for_a_call_that_never_started(
        tmp_path: Path) -> None:
    retry = snakepit.RetryPolicy(max_attempts=2, backoff_initial=0.01, backoff_max=0.05)
    seen: list[str] = []
    handle = snakepit.telemetry.attach(
        "call.retry", lambda name, m, meta: seen.append(str(meta["error"])))
    try:
        async with snakepit.open_pool(chaos_config(size=1, retry=retry)) as pool:
            old_pid = pool.workers()[0].pid
            _, queued = await crash_with_a_call_queued(pool, tmp_path / "gate", "pid")
            assert isinstance(queued, int) and queued != old_pid  # ran on the replacement
    finally:
        snakepit.telemetry.detach(handle)
    assert seen == []  # moved to the replacement, not retried; the blocked calls neither


async def test_signal_death_is_reported_with_the_signal() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        with pytest.raises(snakepit.WorkerCrashed, match="SIGKILL") as info:
            await pool.execute("kill_self", {"signal": int(signal.SIGKILL)})
        assert info.value.signal == signal.SIGKILL


async def test_concurrent_worker_multiplexes_and_all_its_calls_fail_together() -> None:
    config = chaos_config(size=1, handler="barrier_handler:ThreadedChaosHandler",
                          env=support_env())
    async with snakepit.open_pool(config) as pool:
        worker = pool.workers()[0]
        assert worker.capacity == 4
        outcomes: list[str] = []
        async with trio.open_nursery() as nursery:
            async def nap() -> None:
                try:
                    await pool.execute("nap", {"seconds": 60})
                except snakepit.WorkerCrashed:
                    outcomes.append("crashed")

            for _ in range(3):
                nursery.start_soon(nap)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.stats().workers[0].in_flight == 3  # three calls on one pipe
            assert await pool.execute("echo", "multiplexed") == "multiplexed"
            with pytest.raises(snakepit.WorkerCrashed):
                await pool.execute("crash")
        assert outcomes == ["crashed"] * 3


async def test_restart_intensity_marks_slot_failed_and_pool_broken() -> None:
    policy = snakepit.RestartPolicy(max_restarts=2, period=60, backoff_initial=0.01,
                                    backoff_max=0.02, cooldown=None)
    async with snakepit.open_pool(chaos_config(size=1, restart=policy)) as pool:
        for _ in range(3):
            await pool.wait_ready()
            with pytest.raises(snakepit.WorkerCrashed):
                await pool.execute("crash")
        await pool.wait_ready()  # returns once the slot is failed
        assert pool.stats().workers[0].state is snakepit.SlotState.FAILED
        assert pool.stats().restarts == 2
        with pytest.raises(snakepit.PoolBroken) as info:
            await pool.execute("ping")
        assert info.value.retry_after is None  # no cool-down: broken for good


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    policy = snakepit.RestartPolicy(backoff_initial=0.1, backoff_max=1.0, jitter=0.2)
    slot = Slot(snakepit.PoolConfig(restart=policy), 0, release=print, on_ready=print,
                on_failed=print)
    for consecutive, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [slot.backoff(consecutive) for _ in range(200)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_no_jitter_means_exact_delays() -> None:
    policy = snakepit.RestartPolicy(backoff_initial=0.5, backoff_max=10, jitter=0)
    slot = Slot(snakepit.PoolConfig(restart=policy), 0, release=print, on_ready=print,
                on_failed=print)
    assert [slot.backoff(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
