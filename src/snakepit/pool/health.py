"""The health monitor: ping idle workers, enforce the memory limit, report pool health.

Only idle workers are pinged: a serial worker reads control frames between calls, so
pinging a busy one would measure its call, not its health. The ping uses no capacity
unit, so it never delays a user call. A worker that stays idle and silent past
``health_check_timeout`` is hung (stuck in native code, SIGSTOPped) and is killed; its
slot restarts it like any failed worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from snakepit import _realtime as realtime
from snakepit import telemetry
from snakepit.pool.stats import resident_memory
from snakepit.worker.slot_events import SlotState
from snakepit.worker.worker import WorkerState

if TYPE_CHECKING:
    from snakepit.config import PoolConfig
    from snakepit.pool.dispatch import Dispatcher
    from snakepit.pool.slots import Emit, WorkerSlots
    from snakepit.worker.worker import Worker

log = logging.getLogger("snakepit.health")


class HealthMonitor:
    """Watches the pool's workers: health checks, memory, heartbeats, health reports.

    Args:
        config: the pool's configuration (intervals, timeouts, ``memory_limit``).
        slots: the workers to watch.
        dispatcher: its queue depth goes into ``pool.health``.
        emit: the pool's telemetry.
        worker_info: the pool kind's facts about a slot (for ``worker.info``).
    """

    def __init__(self, config: PoolConfig, slots: WorkerSlots, dispatcher: Dispatcher,
                 emit: Emit, worker_info: Callable[[str], Mapping[str, Any]]) -> None:
        self.config = config
        self.slots = slots
        self.dispatcher = dispatcher
        self.emit = emit
        self.worker_info = worker_info

    async def check_worker(self, worker: Worker) -> None:
        """Ping one idle worker; kill it if it stays idle and silent past the timeout."""
        if worker.in_flight or not worker.accepting:
            return  # a call started since the round looked: pinging it would measure that
        served = worker.calls_served
        timeout = self.config.health_check_timeout
        with realtime.move_on_after(timeout):
            await worker.ping()
            return
        if worker.in_flight == 0 and worker.calls_served == served and worker.accepting:
            self.emit("worker.unhealthy", {"timeout": timeout}, worker=worker.id,
                      pid=worker.pid, reason="missed health check")
            worker.kill(f"no answer to a health check within {timeout}s")
        # else: a call arrived meanwhile and the pong waits behind it: inconclusive

    def check_memory(self, worker: Worker) -> None:
        limit = self.config.memory_limit
        if limit is None:
            return
        rss = resident_memory(worker.pid)
        if rss is not None and rss > limit:
            self.emit("worker.unhealthy", {"rss": rss, "limit": limit},
                      worker=worker.id, pid=worker.pid, reason="memory limit")
            worker.retire(f"resident memory {rss} bytes exceeds memory_limit {limit}")

    async def monitor(self) -> None:
        """Every ``health_check_interval``: check idle workers and report pool health."""
        interval = self.config.health_check_interval
        assert interval is not None
        while True:
            await realtime.sleep(interval)
            async with trio.open_nursery() as nursery:
                for worker in self.slots.workers():
                    if not worker.accepting:
                        continue
                    self.check_memory(worker)
                    if worker.in_flight == 0 and worker.accepting:
                        nursery.start_soon(self.check_worker, worker)
            self.report()

    def report(self) -> None:
        """The ``worker.info``, ``worker.stats`` and ``pool.health`` events (for whoever
        listens)."""
        emit = self.emit
        if telemetry.enabled("worker.info"):
            for worker in self.slots.workers():
                info = self.worker_info(worker.id)
                if info:
                    numbers = {k: float(v) for k, v in info.items()
                               if isinstance(v, int | float) and not isinstance(v, bool)}
                    others = {k: v for k, v in info.items() if k not in numbers}
                    emit("worker.info", numbers, worker=worker.id, pid=worker.pid, **others)
        if telemetry.enabled("worker.stats"):
            for worker in self.slots.workers():
                emit("worker.stats", {"rss": float(resident_memory(worker.pid) or 0),
                                      "in_flight": worker.in_flight,
                                      "calls_served": worker.calls_served},
                     worker=worker.id, pid=worker.pid, state=worker.state.value)
        if telemetry.enabled("pool.health"):
            ready = [w for w in self.slots.workers() if w.accepting]
            busy = sum(1 for w in ready if w.in_flight)
            states = [slot.current_state for slot in self.slots.slots]
            emit("pool.health", {"available": len(ready) - busy, "busy": busy,
                                 "total": self.config.size,
                                 "starting": states.count(SlotState.STARTING),
                                 "failed": states.count(SlotState.FAILED),
                                 "queue_depth": self.dispatcher.queue_depth,
                                 "restarts": self.slots.restarts})

    async def watch_heartbeats(self) -> None:
        """Every ``heartbeat_interval``: :meth:`check_heartbeats`."""
        interval = self.config.heartbeat_interval
        assert interval is not None
        while True:
            await realtime.sleep(interval)
            self.check_heartbeats()

    def check_heartbeats(self) -> None:
        """Kill any worker that has sent nothing for ``heartbeat_timeout`` seconds.

        The bridge's heartbeat thread writes a frame every ``heartbeat_interval``, even
        during a call, so silence means the process is stopped or stuck in native code
        holding the GIL: its state is unknown and it will not recover by itself. Every
        live worker is watched, retiring ones included (they finish their calls while
        their replacement serves, and their callers wait), so a silent worker is killed
        within ``heartbeat_timeout + heartbeat_interval`` of its last frame (plus the
        host's own scheduling delay) and its calls fail with ``WorkerCrashed``.
        """
        timeout = self.config.heartbeat_timeout
        now = realtime.monotonic()
        for worker in self.slots.live_workers():
            if worker.state is WorkerState.DEAD or worker.killed:
                continue
            silent = now - worker.connection.last_heard
            if silent <= timeout:
                continue
            if worker.connection.has_unread_data():
                # It did write; the host was too busy to read it (a stall of the host,
                # not of the worker). The reader takes it before the next look.
                continue
            self.emit("worker.unhealthy", {"silent": silent}, worker=worker.id,
                      pid=worker.pid, reason="no heartbeat")
            worker.kill(f"no heartbeat for {silent:.1f}s (stopped, or stuck holding the GIL)")
