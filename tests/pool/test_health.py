"""Health monitoring: hung idle workers are replaced; busy ones are left alone."""

import os
import signal
from typing import Any

import trio

import snakepit
from tests.conftest import chaos_config, started


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
        config = chaos_config(size=2, health_check_interval=0.1, health_check_timeout=0.3)
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


async def test_busy_worker_is_not_pinged_away() -> None:
    config = chaos_config(size=1, health_check_interval=0.05, health_check_timeout=0.1)
    recorder = Recorder("pool.health", "worker.unhealthy")
    try:
        async with snakepit.open_pool(config) as pool:
            # a call much longer than the health timeout, spanning several checks
            assert await pool.execute("sleep", {"seconds": 0.6}) == 0.6
            await recorder.wait_for("pool.health")
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


async def test_memory_limit_recycles_after_the_call_in_flight() -> None:
    # A limit every Python process exceeds: each worker is recycled at the first check.
    config = chaos_config(size=1, health_check_interval=0.05, memory_limit=1024)
    recorder = Recorder("worker.unhealthy", "worker.exited")
    try:
        async with snakepit.open_pool(config) as pool:
            first = pool.workers()[0].pid
            # the recycle waits for the call in flight, which completes normally
            assert await pool.execute("sleep", {"seconds": 0.3}) == 0.3
            event = await recorder.wait_for("worker.unhealthy", pid=first)
            assert event["reason"] == "memory limit" and event["rss"] > 1024
            exited = await recorder.wait_for("worker.exited", pid=first)
            assert exited["on_purpose"] is True and exited["exit_code"] == 0
    finally:
        recorder.close()


def heartbeat_config(**overrides: Any) -> snakepit.PoolConfig:
    return chaos_config(size=1, heartbeat_interval=0.1, heartbeat_timeout=0.6,
                        health_check_interval=None, **overrides)


async def test_stopped_busy_worker_is_detected_by_its_silence() -> None:
    async with snakepit.open_pool(heartbeat_config()) as pool:
        worker = pool.workers()[0]
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def long_call() -> None:
                try:
                    await pool.execute("sleep", {"seconds": 60},
                                       on_progress=lambda *_: running.set())
                except snakepit.SnakepitError as exc:
                    outcome.append(exc)

            running = trio.Event()
            nursery.start_soon(long_call)
            await running.wait()
            os.kill(worker.pid, signal.SIGSTOP)
        assert [type(e) for e in outcome] == [snakepit.WorkerCrashed]
        assert "no heartbeat" in str(outcome[0])
        await pool.wait_ready()
        assert await pool.execute("pid") != worker.pid


async def test_worker_stuck_in_native_code_holding_the_gil_is_replaced() -> None:
    async with snakepit.open_pool(heartbeat_config()) as pool:
        pid = pool.workers()[0].pid
        with trio.fail_after(10):
            try:
                await pool.execute("hold_gil", {"seconds": 30})
            except snakepit.WorkerCrashed as exc:
                assert "no heartbeat" in str(exc)
            else:
                raise AssertionError("the stuck call returned")
            await pool.wait_ready()
        assert await pool.execute("pid") != pid


async def test_long_call_that_releases_the_gil_keeps_beating() -> None:
    async with snakepit.open_pool(heartbeat_config()) as pool:
        # twice the heartbeat timeout, in time.sleep (the GIL is released): alive
        assert await pool.execute("sleep", {"seconds": 1.2}) == 1.2
        assert pool.stats().restarts == 0
