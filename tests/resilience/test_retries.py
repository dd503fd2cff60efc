"""Retries within one deadline, and the circuit breaker, on real workers."""

from pathlib import Path
from typing import Any

import pytest
import trio
import trio_util
from trio.testing import MockClock

import snakepit
from tests.conftest import chaos_config, mock_clock_config, started, wall_clock_limit


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


async def test_an_error_the_handler_marks_retryable_is_retried(tmp_path: Path) -> None:
    async with snakepit.open_pool(chaos_config(size=1, retry=RETRY)) as pool:
        args = {"path": str(tmp_path / "count"), "failures": 2}
        assert await pool.execute("transient", args) == 2  # third time lucky
        assert pool.stats().restarts == 0  # the worker stayed in service throughout
        # no policy, or a plain exception: the RemoteError says whether it may retry
        with pytest.raises(snakepit.RemoteError) as info:
            await pool.execute("transient", {**args, "path": str(tmp_path / "other"),
                                             "marked": False})
        assert not info.value.retryable and (tmp_path / "other").read_text() == "1"
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        with pytest.raises(snakepit.RemoteError) as info:
            await pool.execute("transient", {**args, "path": str(tmp_path / "third")})
        assert info.value.retryable
        assert info.value.remote_type == "snakepit.bridge.RetryableError"


async def test_routed_and_session_calls_may_be_idempotent(tmp_path: Path) -> None:
    config = snakepit.SnakepitConfig(pools={"p": chaos_config(name="p", size=1, retry=RETRY)},
                                     default_pool="p")
    async with snakepit.open_pools(config) as pools:
        args = {"path": str(tmp_path / "routed"), "failures": 1}
        assert await pools.execute("flaky", args, idempotent=True) == 1
        args = {"path": str(tmp_path / "routed-session"), "failures": 1}
        async with pools["p"].session() as s:
            assert await pools.execute_in_session(s.id, "flaky", args, idempotent=True) == 1
            args = {"path": str(tmp_path / "session"), "failures": 1}
            assert await s.execute("flaky", args, idempotent=True) == 1
        with pytest.raises(snakepit.WorkerCrashed):  # not idempotent: not retried
            await pools.execute("flaky", {"path": str(tmp_path / "once"), "failures": 1})


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


async def test_backoff_runs_on_trios_clock_and_stops_at_the_deadline(
        mock_clock: MockClock, tmp_path: Path) -> None:
    # Delays of 100 s and 200 s: on a wall clock the test could not finish in time.
    policy = snakepit.RetryPolicy(max_attempts=5, backoff_initial=100, backoff_max=1000,
                                  multiplier=2, jitter=0)
    config = mock_clock_config(size=1, retry=policy)
    count = tmp_path / "count"
    retries = trio_util.AsyncValue(0)
    failed_at: list[float] = []

    async def call() -> None:
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("flaky", {"path": str(count), "failures": 9},
                               idempotent=True, timeout=350)
        failed_at.append(trio.current_time())

    async def attempt_waits(seconds: float) -> None:
        """The clock moves ``seconds`` and no further attempt starts."""
        await pool.wait_ready()  # the crashed worker's replacement is up (real I/O)
        mock_clock.jump(seconds)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.workers()[0].calls_started == 0

    with Events("call.retry") as events, wall_clock_limit(60):
        handler = snakepit.telemetry.attach(
            "call.retry", lambda *_: setattr(retries, "value", retries.value + 1))
        try:
            async with snakepit.open_pool(config) as pool, trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await retries.wait_value(1)  # attempt 1 crashed at t=0
                await attempt_waits(99.9)
                assert count.read_text() == "1"
                mock_clock.jump(0.1)
                await retries.wait_value(2)  # attempt 2 ran at t=100 and crashed
                await attempt_waits(199.9)
                assert count.read_text() == "2"
                mock_clock.jump(0.1)
        finally:
            snakepit.telemetry.detach(handler)
    # attempt 3 ran at t=300 and crashed; a 400 s wait would pass the 350 s deadline
    assert failed_at == [pytest.approx(300)]
    assert count.read_text() == "3"
    assert [(e["attempt"], e["delay"]) for _, e in events.seen] == [(1, 100), (2, 200)]


# The circuit tests run on trio's MockClock: time moves only when the test says so, so a
# worker restart that takes long under load can never eat into the reset timeout.


def breaker_config(**policy: Any) -> snakepit.PoolConfig:
    return mock_clock_config(size=1, pipeline_depth=1,
                             circuit_breaker=snakepit.CircuitBreakerPolicy(**policy))


async def test_circuit_opens_fails_fast_and_closes_after_a_good_probe(
        mock_clock: MockClock) -> None:
    with Events("circuit.changed") as events, wall_clock_limit(60):
        async with snakepit.open_pool(breaker_config(failure_threshold=2,
                                                     reset_timeout=5)) as pool:
            for _ in range(2):
                with pytest.raises(snakepit.WorkerCrashed):
                    await pool.execute("crash")
            await pool.wait_ready()
            served = pool.stats().workers[0].calls_served
            with pytest.raises(snakepit.CircuitOpen) as info:
                await pool.execute("echo", 1)
            assert info.value.retry_after == pytest.approx(5)  # the clock has not moved
            assert pool.stats().workers[0].calls_served == served  # no worker touched
            mock_clock.jump(4.9)
            with pytest.raises(snakepit.CircuitOpen) as info:
                await pool.execute("echo", 2)
            assert info.value.retry_after == pytest.approx(0.1)
            mock_clock.jump(0.1)
            assert await pool.execute("echo", "probe") == "probe"
            assert await pool.execute("echo", "flowing") == "flowing"
    assert [e["state"] for _, e in events.seen] == ["open", "half_open", "closed"]


async def test_a_cancelled_probe_lets_the_next_call_probe(mock_clock: MockClock) -> None:
    with Events("circuit.changed") as events, wall_clock_limit(60):
        async with snakepit.open_pool(breaker_config(
                failure_threshold=1, reset_timeout=5, failures=["RemoteError"])) as pool:
            with pytest.raises(snakepit.RemoteError):
                await pool.execute("raise")
            mock_clock.jump(5)
            running = trio.Event()
            async with trio.open_nursery() as nursery:
                async def probe() -> None:
                    await pool.execute("nap", {"seconds": 60},
                                       on_progress=lambda *_: running.set())

                nursery.start_soon(probe)
                await running.wait()
                with pytest.raises(snakepit.CircuitOpen, match="probe"):
                    await pool.execute("echo", "while the probe runs")
                nursery.cancel_scope.cancel()  # the probe's caller gives up
            # the circuit is half-open with no probe running: this call is the probe
            assert await pool.execute("echo", "next") == "next"
            assert await pool.execute("echo", "flowing") == "flowing"
    assert [e["state"] for _, e in events.seen] == ["open", "half_open", "closed"]


async def test_a_probe_that_times_out_in_the_queue_does_not_close_the_circuit(
        mock_clock: MockClock) -> None:
    with Events("circuit.changed") as events, wall_clock_limit(60):
        async with snakepit.open_pool(breaker_config(
                failure_threshold=1, reset_timeout=5, failures=["RemoteError"],
                per_command=True)) as pool, trio.open_nursery() as nursery:
            with pytest.raises(snakepit.RemoteError):
                await pool.execute("raise")
            mock_clock.jump(5)
            await started(pool, nursery, "nap", {"seconds": 60})  # its own circuit
            queued = trio.Event()

            async def probe() -> None:
                with pytest.raises(snakepit.QueueTimeout):
                    await pool.execute("raise", timeout=1)
                queued.set()

            nursery.start_soon(probe)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.stats().queue_depth == 1
            mock_clock.jump(1)
            await queued.wait()  # the probe never reached a worker: no verdict
            assert [e["state"] for _, e in events.seen] == ["open", "half_open"]
            nursery.cancel_scope.cancel()
    assert [(e["circuit"], e["state"]) for _, e in events.seen] == [
        ("raise", "open"), ("raise", "half_open")]
