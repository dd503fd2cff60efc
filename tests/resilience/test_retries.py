"""Retries within one deadline, and the circuit breaker, on real workers."""

from pathlib import Path
from typing import Any

import pytest
import trio

import snakepit
from tests.conftest import chaos_config


class Events:
    def __init__(self, *names: str) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._id = snakepit.telemetry.attach(
            list(names), lambda name, m, meta: self.seen.append((name, {**m, **meta})))

    def __enter__(self) -> "Events":
        return self

    def __exit__(self, *exc: object) -> None:
        snakepit.telemetry.detach(self._id)


RETRY = snakepit.RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.05)


async def test_idempotent_call_survives_crashes(tmp_path: Path) -> None:
    with Events("call.retry") as events:
        async with snakepit.open_pool(chaos_config(size=1, retry=RETRY)) as pool:
            args = {"path": str(tmp_path / "count"), "failures": 2}
            assert await pool.execute("flaky", args, idempotent=True) == 2
            assert pool.stats().succeeded == 1 and pool.stats().restarts == 2
    assert [e["attempt"] for _, e in events.seen] == [1, 2]
    assert all(e["error"] == "WorkerCrashed" for _, e in events.seen)


async def test_crash_is_not_retried_unless_idempotent(tmp_path: Path) -> None:
    async with snakepit.open_pool(chaos_config(size=1, retry=RETRY)) as pool:
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("flaky", {"path": str(tmp_path / "count"), "failures": 1})
        assert (tmp_path / "count").read_text() == "1"  # exactly one attempt


async def test_attempts_are_bounded(tmp_path: Path) -> None:
    async with snakepit.open_pool(chaos_config(size=1, retry=RETRY)) as pool:
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("flaky", {"path": str(tmp_path / "count"), "failures": 9},
                               idempotent=True)
        assert (tmp_path / "count").read_text() == "3"


async def test_saturation_is_retried_within_the_deadline() -> None:
    policy = snakepit.RetryPolicy(max_attempts=100, backoff_initial=0.02, backoff_max=0.05)
    config = chaos_config(size=1, max_queue=0, pipeline_depth=1, retry=policy)
    async with snakepit.open_pool(config) as pool, trio.open_nursery() as nursery:
        nursery.start_soon(pool.execute, "nap", {"seconds": 0.3})
        await trio.testing.wait_all_tasks_blocked()
        # saturated at first; retried until the nap ends and the worker is free
        assert await pool.execute("echo", "in the end", timeout=10) == "in the end"
        nursery.start_soon(pool.execute, "nap", {"seconds": 5})
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(2), pytest.raises(snakepit.PoolSaturated):
            await pool.execute("echo", "no time", timeout=0.3)  # gives up at the deadline
        nursery.cancel_scope.cancel()


async def test_circuit_opens_fails_fast_and_closes_after_a_good_probe() -> None:
    breaker = snakepit.CircuitBreakerPolicy(failure_threshold=2, reset_timeout=0.3)
    with Events("circuit.changed") as events:
        async with snakepit.open_pool(chaos_config(size=1, circuit_breaker=breaker)) as pool:
            for _ in range(2):
                with pytest.raises(snakepit.WorkerCrashed):
                    await pool.execute("crash")
            await pool.wait_ready()
            served = pool.stats().workers[0].calls_served
            with pytest.raises(snakepit.CircuitOpen) as info:
                await pool.execute("echo", 1)
            assert 0 < info.value.retry_after <= 0.3
            assert pool.stats().workers[0].calls_served == served  # no worker touched
            await trio.sleep(info.value.retry_after)  # the reset timeout, not a sync
            assert await pool.execute("echo", "probe") == "probe"
            assert await pool.execute("echo", "flowing") == "flowing"
    assert [e["state"] for _, e in events.seen] == ["open", "half_open", "closed"]
