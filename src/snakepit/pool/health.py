"""The health monitor: ping idle workers, enforce the memory limit, report pool health.

Only idle workers are pinged: a serial worker reads control frames between calls, so
pinging a busy one would measure its call, not its health. The ping uses no capacity
unit, so it never delays a user call. A worker that stays idle and silent past
``health_check_timeout`` is hung (stuck in native code, SIGSTOPped) and is killed; its
slot restarts it like any failed worker.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import trio

from snakepit import _realtime as realtime
from snakepit import telemetry
from snakepit.worker.worker import WorkerState

if TYPE_CHECKING:
    from snakepit.pool.pool import Pool
    from snakepit.worker.worker import Worker

log = logging.getLogger("snakepit.health")

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_memory(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (Linux /proc), or None if unreadable."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


async def check_worker(pool: Pool, worker: Worker) -> None:
    """Ping one idle worker; kill it if it stays idle and silent past the timeout."""
    if worker.in_flight or not worker.accepting:
        return  # a call started since the round looked: pinging it would measure that
    served = worker.calls_served
    with realtime.move_on_after(pool.config.health_check_timeout):
        await worker.ping()
        return
    if worker.in_flight == 0 and worker.calls_served == served and worker.accepting:
        pool._emit("worker.unhealthy", {"timeout": pool.config.health_check_timeout},
                   worker=worker.id, pid=worker.pid, reason="missed health check")
        worker.kill(f"no answer to a health check within {pool.config.health_check_timeout}s")
    # else: a call arrived meanwhile and the pong waits behind it: inconclusive


def check_memory(pool: Pool, worker: Worker) -> None:
    limit = pool.config.memory_limit
    if limit is None:
        return
    rss = resident_memory(worker.pid)
    if rss is not None and rss > limit:
        pool._emit("worker.unhealthy", {"rss": rss, "limit": limit},
                   worker=worker.id, pid=worker.pid, reason="memory limit")
        worker.retire(f"resident memory {rss} bytes exceeds memory_limit {limit}")


async def monitor_health(pool: Pool) -> None:
    """Every ``health_check_interval``: check idle workers and report pool health."""
    interval = pool.config.health_check_interval
    assert interval is not None
    while True:
        await realtime.sleep(interval)
        workers = pool.workers()
        async with trio.open_nursery() as nursery:
            for worker in workers:
                if not worker.accepting:
                    continue
                check_memory(pool, worker)
                if worker.in_flight == 0 and worker.accepting:
                    nursery.start_soon(check_worker, pool, worker)
        if telemetry.enabled("worker.info") and pool._kind is not None:
            for worker in pool.workers():
                info = pool._kind.worker_info(worker.id)
                if info:
                    numbers = {k: float(v) for k, v in info.items()
                               if isinstance(v, int | float) and not isinstance(v, bool)}
                    others = {k: v for k, v in info.items() if k not in numbers}
                    pool._emit("worker.info", numbers, worker=worker.id, pid=worker.pid,
                               **others)
        if telemetry.enabled("worker.stats"):
            for worker in pool.workers():
                pool._emit("worker.stats", {"rss": float(resident_memory(worker.pid) or 0),
                                            "in_flight": worker.in_flight,
                                            "calls_served": worker.calls_served},
                           worker=worker.id, pid=worker.pid, state=worker.state.value)
        if telemetry.enabled("pool.health"):
            ready = [w for w in pool.workers() if w.accepting]
            busy = sum(1 for w in ready if w.in_flight)
            states = [slot.current_state for slot in pool._slots]
            pool._emit("pool.health", {"available": len(ready) - busy, "busy": busy,
                                       "total": pool.config.size,
                                       "starting": states.count("starting"),
                                       "failed": states.count("failed"),
                                       "queue_depth": pool._dispatcher.queue_depth,
                                       "restarts": sum(s.restarts for s in pool._slots)})


def live_workers(pool: Pool) -> list[Worker]:
    """Every worker process of the pool that may still run calls: each slot's current
    worker and the retiring ones that finish their calls while their replacement
    serves (they are no longer in :meth:`Pool.workers`, but their callers wait)."""
    return [worker for slot in pool._slots for worker in slot.live_workers()
            if worker.state is not WorkerState.DEAD and not worker.killed]


async def watch_heartbeats(pool: Pool) -> None:
    """Every ``heartbeat_interval``: :func:`check_heartbeats`."""
    interval = pool.config.heartbeat_interval
    assert interval is not None
    while True:
        await realtime.sleep(interval)
        check_heartbeats(pool)


def check_heartbeats(pool: Pool) -> None:
    """Kill any worker that has sent nothing for ``heartbeat_timeout`` seconds.

    The bridge's heartbeat thread writes a frame every ``heartbeat_interval``, even
    during a call, so silence means the process is stopped or stuck in native code
    holding the GIL: its state is unknown and it will not recover by itself. Every
    live worker is watched, retiring ones included, so a silent worker is killed
    within ``heartbeat_timeout + heartbeat_interval`` of its last frame (plus the
    host's own scheduling delay) and its calls fail with ``WorkerCrashed``.
    """
    timeout = pool.config.heartbeat_timeout
    now = realtime.monotonic()
    for worker in live_workers(pool):
        silent = now - worker.connection.last_heard
        if silent <= timeout:
            continue
        if worker.connection.has_unread_data():
            # It did write; the host was too busy to read it (a stall of the host, not
            # of the worker). The reader takes it before the next look.
            continue
        pool._emit("worker.unhealthy", {"silent": silent}, worker=worker.id,
                   pid=worker.pid, reason="no heartbeat")
        worker.kill(f"no heartbeat for {silent:.1f}s (stopped, or stuck holding the GIL)")
