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
        # callers that must have one particular worker (strict session affinity)
        self._pinned: dict[Worker, collections.deque[trio.lowlevel.Task]] = {}
        self._closed = False
        self._broken = False
        self.mean_service_time = 0.001
        """Moving average of call durations, in seconds; feeds ``retry_after``."""

    @property
    def queue_depth(self) -> int:
        return len(self._waiters) + sum(len(q) for q in self._pinned.values())

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
        pinned = self._pinned.get(worker)
        if pinned:
            worker.reserved += 1
            trio.lowlevel.reschedule(pinned.popleft(), outcome.Value(worker))
        elif self._waiters:
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
        return self._take_unit()

    def _take_unit(self) -> Worker | None:
        for units in (self._idle, self._spare):
            while units:
                worker = units.popleft()
                if worker.accepting:
                    worker.reserved += 1
                    return worker
        return None

    def try_acquire_worker(self, worker: Worker, *, primary_only: bool = False) -> bool:
        """Take a free unit of this particular worker, without waiting.

        ``primary_only`` refuses a pipelined unit (one that would queue behind a call
        already running on the worker).
        """
        if not worker.accepting or self._pinned.get(worker):
            return False
        for units in (self._idle,) if primary_only else (self._idle, self._spare):
            try:
                units.remove(worker)
            except ValueError:
                continue
            worker.reserved += 1
            return True
        return False

    async def acquire_worker(self, worker: Worker) -> Worker:
        """Wait, in FIFO order among its callers, for a unit of this particular worker.

        Raises:
            PoolClosed, PoolSaturated: as :meth:`acquire`.
            SessionWorkerLost: the worker went away while the caller waited (the error
                given to :meth:`worker_gone`).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise PoolClosed("the pool is closed")
        if self.try_acquire_worker(worker):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return worker
        self._check_room()
        task = trio.lowlevel.current_task()
        queue = self._pinned.setdefault(worker, collections.deque())
        queue.append(task)

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            queue.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    def worker_gone(self, worker: Worker, error: Exception) -> None:
        """``worker`` will never free a unit again: fail the callers pinned to it."""
        for task in self._pinned.pop(worker, ()):
            trio.lowlevel.reschedule(task, outcome.Error(error))

    def _check_room(self) -> None:
        depth = self.queue_depth
        if depth >= self.max_queue:
            raise PoolSaturated(f"{depth} calls already wait for a worker (max_queue)",
                                retry_after=self.mean_service_time * (depth + 1))

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
        while worker is not None:
            # the unit is ours now: yield without any chance of losing it to a cancel
            await trio.lowlevel.cancel_shielded_checkpoint()
            if worker.accepting:
                return worker
            # it began to retire while we yielded: give the unit back, try again
            self.release(worker)
            if self._closed:
                raise PoolClosed("the pool is closed")
            worker = self.try_acquire()
        if self._broken:
            raise PoolBroken("every worker slot has failed past its restart intensity")
        self._check_room()
        task = trio.lowlevel.current_task()
        self._waiters.append(task)

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            self._waiters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            worker = await trio.lowlevel.wait_task_rescheduled(abort)
            if worker.accepting:
                return worker  # type: ignore[no-any-return]
            # It stopped taking calls (retiring) between the hand-over and now: give the
            # unit back and take another, or wait again -- first in line.
            self.release(worker)
            if self._closed:
                raise PoolClosed("the pool is closed")
            other = self._take_unit()
            if other is not None:
                return other
            self._waiters.appendleft(task)

    def _fail_waiters(self, error: Exception, *, pinned_too: bool = False) -> None:
        waiters, self._waiters = self._waiters, collections.deque()
        if pinned_too:
            for queue in self._pinned.values():
                waiters.extend(queue)
            self._pinned.clear()
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
        self._fail_waiters(PoolClosed("the pool closed while the call waited for a worker"),
                           pinned_too=True)

    def record_service_time(self, seconds: float) -> None:
        self.mean_service_time += (seconds - self.mean_service_time) * 0.05
