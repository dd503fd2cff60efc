"""Isolation: a call's failure stays that call's.

A call that never started in a worker never fails because of that worker: calls queued
in a pipe behind a stuck, cancelled or crashing call go back to the front of the
dispatch queue and run elsewhere. Gates (``block_until``) and progress callbacks decide
the order, never sleeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import snakepit
from snakepit._bench.isolation import kill_all_but_one
from tests.conftest import chaos_config


def started_counter(target: int) -> tuple[list[int], trio.Event, Any]:
    """An ``on_progress`` callback counting calls that reported they started."""
    started: list[int] = []
    all_started = trio.Event()

    def on_progress(done: float, total: float | None, message: str | None) -> None:
        started.append(1)
        if len(started) >= target:
            all_started.set()

    return started, all_started, on_progress


async def test_the_call_after_a_timeout_runs_on_the_replacement() -> None:
    """Case 1: a timeout on a handler that ignores cancellation, then the very next call
    (default configuration: pipelined behind the stuck call until now)."""
    config = snakepit.PoolConfig(size=1, handler="snakepit.testing:ChaosHandler",
                                 restart=snakepit.RestartPolicy(backoff_initial=0.01))
    async with snakepit.open_pool(config) as pool:
        stuck_pid = pool.workers()[0].pid
        try:
            await pool.execute("sleep", {"seconds": 30}, timeout=0.2)
        except snakepit.WorkerTimeout:
            pass
        else:
            raise AssertionError("the stuck call did not time out")
        pid = await pool.execute("pid", timeout=10)
        assert pid != stuck_pid  # not sent into the stuck worker: it ran on the replacement


async def test_a_call_pipelined_behind_a_stuck_call_moves_when_it_times_out(
        tmp_path: Path) -> None:
    """Case 1, with the next call already waiting in the stuck worker's pipe when the
    stuck call passes its deadline."""
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        stuck_pid = pool.workers()[0].pid
        results: dict[str, Any] = {}
        _, running, on_progress = started_counter(1)
        async with trio.open_nursery() as nursery:
            async def stuck() -> None:
                try:
                    await pool.execute("block_until", {"path": str(tmp_path / "never")},
                                       timeout=5, on_progress=on_progress)
                except snakepit.WorkerTimeout as exc:
                    results["stuck"] = exc

            async def behind() -> None:
                results["behind"] = await pool.execute("pid", timeout=30)

            nursery.start_soon(stuck)
            await running.wait()
            nursery.start_soon(behind)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.stats().in_flight == 2  # it waits in the stuck worker's pipe
        assert isinstance(results["stuck"], snakepit.WorkerTimeout)
        assert results["behind"] != stuck_pid


async def test_calls_after_a_cancelled_caller_all_succeed(tmp_path: Path) -> None:
    """Case 2: a caller cancelled mid-call on a pool of 2, then four calls at once."""
    async with snakepit.open_pool(chaos_config(size=2)) as pool:
        _, running, on_progress = started_counter(1)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(running.wait)

                async def stuck() -> None:
                    await pool.execute("block_until", {"path": str(tmp_path / "never")},
                                       on_progress=on_progress)

                nursery.start_soon(stuck)
                await running.wait()
                scope.cancel()
        assert scope.cancelled_caught
        pids: list[int] = []
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                async def one() -> None:
                    pids.append(await pool.execute("pid", timeout=30))

                nursery.start_soon(one)
        assert len(pids) == 4


async def test_a_crash_storm_fails_only_the_calls_aimed_at_it() -> None:
    """Case 3: every tenth call crashes its worker; no other call fails."""
    restart = snakepit.RestartPolicy(max_restarts=1000, backoff_initial=0.01,
                                     backoff_max=0.02)
    async with snakepit.open_pool(chaos_config(size=4, restart=restart)) as pool:
        crashed, echoed, other = 0, [], []
        limiter = trio.CapacityLimiter(16)

        async def one(index: int) -> None:
            nonlocal crashed
            async with limiter:
                if index % 10 == 9:
                    try:
                        await pool.execute("crash", {"code": 3}, timeout=60)
                    except snakepit.WorkerCrashed:
                        crashed += 1
                    return
                try:
                    echoed.append(await pool.execute("echo", index, timeout=60))
                except snakepit.SnakepitError as exc:  # pragma: no cover - the failure
                    other.append(exc)

        async with trio.open_nursery() as nursery:
            for index in range(200):
                nursery.start_soon(one, index)
        assert other == []
        assert sorted(echoed) == [i for i in range(200) if i % 10 != 9]
        assert crashed == 20


async def test_a_burst_after_recovery_spreads_over_the_replacements(tmp_path: Path) -> None:
    """Case 4: three of four workers die just before a burst of slow calls; the calls
    land in the survivor's pipe, and move to the replacements as they come up."""
    restart = snakepit.RestartPolicy(backoff_initial=0.3, backoff_max=0.3, jitter=0.0)
    async with snakepit.open_pool(chaos_config(size=4, restart=restart)) as pool:
        for _ in range(50):
            await pool.execute("echo", 1)  # quick calls: the pipeline deepens
        with trio.fail_after(10):
            await kill_all_but_one(pool)
        gate = tmp_path / "gate"
        _, all_started, on_progress = started_counter(4)
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                # cooperative: a serial worker reads the wire (a withdraw) only between
                # calls or while its handler looks at it (ctx.cancelled, wait_cancelled)
                nursery.start_soon(lambda: pool.execute(
                    "block_until", {"path": str(gate), "cooperative": True},
                    timeout=30, on_progress=on_progress))
            await trio.testing.wait_all_tasks_blocked()
            stats = pool.stats()
            # all with the survivor: one running, at least one in its pipe, the rest queued
            assert stats.in_flight >= 2
            assert stats.in_flight + stats.queue_depth == 4
            with trio.fail_after(10):
                await all_started.wait()  # each started: on four workers
            assert sorted(w.in_flight for w in pool.stats().workers) == [1, 1, 1, 1]
            gate.write_text("go")


async def test_the_pipeline_depth_follows_service_time_not_round_trips() -> None:
    """Case 5: calls that wait in a deep pipe see long round trips; the depth is set by
    how long handlers run, so it does not shrink itself. One worker's handlers never
    overlap, so the service times it reports add up to at most the time elapsed --
    where round trips, each counting the wait behind the calls ahead, add up to the
    time elapsed times the pipe's depth."""
    async with snakepit.open_pool(chaos_config(size=2, pipeline_depth=8)) as pool:
        dispatcher = pool._dispatcher
        samples: list[float] = []
        record = dispatcher.record_service_time

        def spy(seconds: float) -> None:
            samples.append(seconds)
            record(seconds)

        dispatcher.record_service_time = spy  # type: ignore[method-assign]

        async def caller() -> None:
            for _ in range(50):
                await pool.execute("echo", 1)

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(32):
                nursery.start_soon(caller)
        elapsed = trio.current_time() - started
        assert len(samples) == 32 * 50
        assert sum(samples) <= 2 * elapsed * 1.01  # two workers, never overlapping
        assert dispatcher._depth() == min(8, 1 + int(0.001 / dispatcher.mean_service_time))
