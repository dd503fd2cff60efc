"""Health monitoring: hung idle workers are replaced; busy ones are left alone."""

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import snakepit
from snakepit.worker.worker import Worker
from tests.conftest import chaos_config, hold_open, started, support_env


class Recorder:
    """Collects telemetry events; tests await the ones they need."""

    def __init__(self, *events: str) -> None:
        self.seen: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self._changed = trio.Event()
        self._id = snakepit.telemetry.attach(list(events), self._record)

    def _record(self, event: str, measurements: Any, metadata: Any) -> None:
        self.seen.append((event, dict(measurements), dict(metadata)))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, event: str, **metadata: Any) -> dict[str, Any]:
        with trio.fail_after(10):
            while True:
                for name, measurements, meta in self.seen:
                    if name == event and all(meta.get(k) == v for k, v in metadata.items()):
                        return {**measurements, **meta}
                await self._changed.wait()

    def close(self) -> None:
        snakepit.telemetry.detach(self._id)


async def test_hung_idle_worker_is_replaced() -> None:
    recorder = Recorder("worker.unhealthy", "worker.exited")
    try:
        # a timeout no healthy worker misses on a loaded box; the hung one misses it
        config = chaos_config(size=2, health_check_interval=0.1, health_check_timeout=2.0)
        async with snakepit.open_pool(config) as pool:
            hung = pool.workers()[0]
            os.kill(hung.pid, signal.SIGSTOP)  # stuck: alive, but answers nothing
            event = await recorder.wait_for("worker.unhealthy", pid=hung.pid)
            assert event["reason"] == "missed health check"
            await recorder.wait_for("worker.exited", pid=hung.pid)
            await pool.wait_ready()
            assert hung.pid not in {w.pid for w in pool.workers()}
            assert pool.stats().restarts == 1
            assert await pool.execute("echo", "served") == "served"
    finally:
        recorder.close()


def gate_config(**overrides: Any) -> snakepit.PoolConfig:
    return chaos_config(handler="gate_handler:GateHandler", env=support_env(), **overrides)


async def held_open(pool: snakepit.Pool, nursery: trio.Nursery, gate: Path,
                    results: list[int]) -> Worker:
    """Start a ``gate`` call that runs until ``gate`` exists; return its worker once it
    runs (its pid lands in ``results`` when the call returns)."""
    await hold_open(pool, nursery, gate, results, command="gate")
    [serving] = [w for w in pool._slots.live_workers() if w.in_flight]
    return serving


async def test_busy_worker_is_not_pinged(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    pinged: list[int] = []  # the worker's calls in flight at each ping
    send_ping = Worker.ping

    async def recording(worker: Worker) -> None:
        pinged.append(worker.in_flight)
        await send_ping(worker)

    monkeypatch.setattr(Worker, "ping", recording)
    config = gate_config(size=1, health_check_interval=0.05, health_check_timeout=2.0)
    recorder = Recorder("pool.health", "worker.unhealthy")
    try:
        async with snakepit.open_pool(config) as pool:
            await recorder.wait_for("pool.health")
            assert pinged and set(pinged) == {0}  # the idle worker is pinged
            results: list[int] = []
            async with trio.open_nursery() as nursery:
                worker = await held_open(pool, nursery, tmp_path / "gate", results)
                pinged.clear()
                for _ in range(3):  # whole health rounds pass while it is busy
                    recorder.seen.clear()
                    await recorder.wait_for("pool.health")
                assert pinged == []
                (tmp_path / "gate").touch()
            assert results == [worker.pid]
            assert not [e for e in recorder.seen if e[0] == "worker.unhealthy"]
            assert pool.stats().restarts == 0
    finally:
        recorder.close()


async def test_pool_health_reports_available_busy_total_restarts() -> None:
    config = chaos_config(size=2, health_check_interval=0.05)
    recorder = Recorder("pool.health")
    try:
        async with snakepit.open_pool(config) as pool, trio.open_nursery() as nursery:
            await started(pool, nursery, "nap", {"seconds": 60})
            recorder.seen.clear()
            health = await recorder.wait_for("pool.health", pool="default")
            assert (health["available"], health["busy"], health["total"],
                    health["restarts"]) == (1, 1, 2, 0)
            nursery.cancel_scope.cancel()
    finally:
        recorder.close()


async def test_memory_limit_recycles_after_the_call_in_flight(tmp_path: Path) -> None:
    # A limit every Python process exceeds: each worker is recycled at its first check,
    # the one running the call included.
    config = gate_config(size=1, health_check_interval=0.05, memory_limit=1024)
    recorder = Recorder("worker.unhealthy", "worker.exited")
    try:
        async with snakepit.open_pool(config) as pool:
            results: list[int] = []
            async with trio.open_nursery() as nursery:
                serving = await held_open(pool, nursery, tmp_path / "gate", results)
                event = await recorder.wait_for("worker.unhealthy", pid=serving.pid)
                assert event["reason"] == "memory limit" and event["rss"] > 1024
                # recycled while the call runs: it takes nothing new and finishes this
                assert serving.in_flight == 1 and not serving.accepting
                (tmp_path / "gate").touch()
            assert results == [serving.pid]  # the call completed, on the recycled worker
            exited = await recorder.wait_for("worker.exited", pid=serving.pid)
            assert exited["on_purpose"] is True and exited["exit_code"] == 0
    finally:
        recorder.close()


# A timeout well above any stall of a loaded CI box (a healthy worker must never be
# killed), and a generous allowance on top of the documented bound for the host's own
# scheduling delays: the bound is checked, not the box's speed.
HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, SCHEDULING_SLACK = 0.1, 2.0, 3.0
DETECTION_BOUND = HEARTBEAT_TIMEOUT + HEARTBEAT_INTERVAL + SCHEDULING_SLACK


def heartbeat_config(**overrides: Any) -> snakepit.PoolConfig:
    options: dict[str, Any] = {"size": 1, "heartbeat_interval": HEARTBEAT_INTERVAL,
                               "heartbeat_timeout": HEARTBEAT_TIMEOUT,
                               "health_check_interval": None, **overrides}
    return chaos_config(**options)


async def silenced_during_a_call(pool: snakepit.Pool) -> tuple[Worker, Exception, float]:
    """SIGSTOP the worker running a long call; returns it, the call's error and how long
    after the stop the error came."""
    worker = pool.workers()[0]
    outcome: list[Exception] = []
    running = trio.Event()

    async def long_call() -> None:
        try:
            await pool.execute("sleep", {"seconds": 60}, on_progress=lambda *_: running.set())
        except snakepit.SnakepitError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_call)
        await running.wait()
        stopped_at = trio.current_time()
        os.kill(worker.pid, signal.SIGSTOP)
    assert len(outcome) == 1
    return worker, outcome[0], trio.current_time() - stopped_at


async def test_stopped_busy_worker_is_detected_by_its_silence() -> None:
    async with snakepit.open_pool(heartbeat_config()) as pool:
        with trio.fail_after(30):
            worker, error, after = await silenced_during_a_call(pool)
        assert isinstance(error, snakepit.WorkerCrashed) and "no heartbeat" in str(error)
        assert after < DETECTION_BOUND
        await pool.wait_ready()
        assert await pool.execute("pid") != worker.pid


async def test_a_retiring_worker_that_goes_silent_is_killed_too() -> None:
    # max_calls=1: the call retires its worker as it is sent, so the worker is draining
    # (a replacement takes its slot) when it is stopped.
    recorder = Recorder("worker.unhealthy")
    try:
        async with snakepit.open_pool(heartbeat_config(max_calls=1)) as pool:
            with trio.fail_after(30):
                worker, error, after = await silenced_during_a_call(pool)
            assert not worker.accepting  # it was retiring
            assert isinstance(error, snakepit.WorkerCrashed) and "no heartbeat" in str(error)
            assert after < DETECTION_BOUND
            event = await recorder.wait_for("worker.unhealthy", pid=worker.pid)
            assert event["reason"] == "no heartbeat" and event["silent"] > HEARTBEAT_TIMEOUT
            await pool.wait_ready()
            assert await pool.execute("pid") != worker.pid
    finally:
        recorder.close()


async def test_worker_stuck_in_native_code_holding_the_gil_is_replaced() -> None:
    async with snakepit.open_pool(heartbeat_config()) as pool:
        pid = pool.workers()[0].pid
        stuck_at: list[float] = []  # when the handler reported it was about to block
        with trio.fail_after(30):
            try:
                await pool.execute("hold_gil", {"seconds": 60},
                                   on_progress=lambda *_: stuck_at.append(trio.current_time()))
            except snakepit.WorkerCrashed as exc:
                assert "no heartbeat" in str(exc)
            else:
                raise AssertionError("the stuck call returned")
            assert trio.current_time() - stuck_at[0] < DETECTION_BOUND
            await pool.wait_ready()
        assert await pool.execute("pid") != pid


async def test_long_call_that_releases_the_gil_keeps_beating() -> None:
    async with snakepit.open_pool(heartbeat_config()) as pool:
        # longer than the heartbeat timeout, in time.sleep (the GIL is released): alive
        seconds = HEARTBEAT_TIMEOUT * 1.5
        assert await pool.execute("sleep", {"seconds": seconds}) == seconds
        assert pool.stats().restarts == 0


async def test_a_stall_of_the_host_is_not_taken_for_silent_workers() -> None:
    # The host blocks longer than the heartbeat timeout while the workers keep beating
    # into their pipes. When it wakes, the watchdog may look before the readers have
    # taken those beats (trio runs them in either order): unread bytes prove the worker
    # alive. Here the look comes first for sure: nothing else runs in between.
    async with snakepit.open_pool(heartbeat_config(size=2)) as pool:
        workers = pool.workers()
        time.sleep(HEARTBEAT_TIMEOUT * 1.5)  # noqa: ASYNC251 -- the stall itself: no reader runs
        assert all(time.monotonic() - w.connection.last_heard > HEARTBEAT_TIMEOUT
                   for w in workers)
        pool._health.check_heartbeats()
        assert not any(w.killed for w in workers)
        await trio.testing.wait_all_tasks_blocked()  # the readers catch up
        assert all(time.monotonic() - w.connection.last_heard < HEARTBEAT_TIMEOUT
                   for w in workers)
        assert pool.stats().restarts == 0
