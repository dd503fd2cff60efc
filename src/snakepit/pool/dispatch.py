"""FIFO hand-out of worker capacity, with a bounded wait queue.

A worker with concurrency *c* contributes *c* **primary** units (it runs that many
calls at once) and ``c * (pipeline_depth - 1)`` **spare** units (calls queued in its
pipe behind a running one, so it never idles waiting for the host's round trip --
DESIGN.md measured pipelining as the big lever). A caller takes a primary unit when
one is free, a spare one only when every worker is busy, and otherwise parks in FIFO
order; a released unit is handed straight to the first waiter (no thundering herd).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import outcome
import trio

from snakepit.errors import PoolBroken, PoolClosed, PoolSaturated

if TYPE_CHECKING:
    from snakepit.worker.worker import Worker


class Dispatcher:
    """Hands out units of worker capacity to callers, first come first served."""

    def __init__(self, max_queue: int, pipeline_depth: int = 1) -> None:
        self.max_queue = max_queue
        self.pipeline_depth = pipeline_depth
        self._idle: collections.deque[Worker] = collections.deque()
        self._spare: collections.deque[Worker] = collections.deque()
        self._waiters: collections.deque[trio.lowlevel.Task] = collections.deque()
        self._closed = False
        self._broken = False
        self.mean_service_time = 0.001
        """Moving average of call durations, in seconds; feeds ``retry_after``."""

    @property
    def queue_depth(self) -> int:
        return len(self._waiters)

    def add_worker(self, worker: Worker) -> None:
        """A new worker is ready: offer all of its capacity."""
        worker.reserved = worker.capacity * self.pipeline_depth
        for _ in range(worker.reserved):
            self.release(worker)

    def release(self, worker: Worker) -> None:
        """One unit of ``worker``'s capacity is free again."""
        worker.reserved -= 1
        if not worker.accepting or self._closed:
            return
        if self._waiters:
            worker.reserved += 1
            trio.lowlevel.reschedule(self._waiters.popleft(), outcome.Value(worker))
        elif worker.reserved < worker.capacity:
            self._idle.append(worker)
        else:
            self._spare.append(worker)

    def try_acquire(self) -> Worker | None:
        """A free unit, without waiting; ``None`` if none is free or others wait first."""
        if self._waiters:
            return None
        for units in (self._idle, self._spare):
            while units:
                worker = units.popleft()
                if worker.accepting:
                    worker.reserved += 1
                    return worker
        return None

    async def acquire(self) -> Worker:
        """Wait, in FIFO order, for a unit of capacity.

        Raises:
            PoolClosed: the pool is closing.
            PoolBroken: every slot has failed.
            PoolSaturated: ``max_queue`` callers already wait.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise PoolClosed("the pool is closed")
        worker = self.try_acquire()
        if worker is not None:
            # the unit is ours now: yield without any chance of losing it to a cancel
            await trio.lowlevel.cancel_shielded_checkpoint()
            return worker
        if self._broken:
            raise PoolBroken("every worker slot has failed past its restart intensity")
        if len(self._waiters) >= self.max_queue:
            retry_after = self.mean_service_time * (len(self._waiters) + 1)
            raise PoolSaturated(
                f"{len(self._waiters)} calls already wait for a worker (max_queue)",
                retry_after=retry_after,
            )
        task = trio.lowlevel.current_task()
        self._waiters.append(task)

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            self._waiters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        worker = await trio.lowlevel.wait_task_rescheduled(abort)
        return worker  # type: ignore[no-any-return]

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, collections.deque()
        for task in waiters:
            trio.lowlevel.reschedule(task, outcome.Error(error))

    def mark_broken(self) -> None:
        """Every slot has failed: waiting callers and new ones get PoolBroken."""
        self._broken = True
        self._fail_waiters(PoolBroken("every worker slot has failed past its restart intensity"))

    def close(self) -> None:
        """Refuse new calls; waiting callers get PoolClosed."""
        self._closed = True
        self._idle.clear()
        self._spare.clear()
        self._fail_waiters(PoolClosed("the pool closed while the call waited for a worker"))

    def record_service_time(self, seconds: float) -> None:
        self.mean_service_time += (seconds - self.mean_service_time) * 0.05
