"""FIFO hand-out of worker capacity, with a bounded wait queue.

A worker with concurrency *c* contributes *c* **primary** units (it runs that many
calls at once) and up to ``c * (pipeline_depth - 1)`` **spare** units (calls queued in
its pipe behind a running one, so it never idles waiting for the host's round trip --
DESIGN.md measured pipelining as the big lever). A caller takes a primary unit when
one is free, a spare one only when every worker is busy, and otherwise parks in FIFO
order; a released unit is handed straight to the first waiter (no thundering herd).

The pipeline is only as deep as the calls are quick: a worker offers
``1 + PIPELINE_BUDGET / mean service time`` units per unit of concurrency, at least
two (one running, one waiting: the behaviour of slow calls) and at most
``pipeline_depth``. So about a millisecond of expected work waits in a pipe, whatever
the call length: trivial calls go 8 deep (on the 2-core box that cut the host's CPU per
call from ~25 to ~17 µs and the worker's from ~20 to ~11 µs), while calls of a
millisecond or more queue no deeper than before.
"""

from __future__ import annotations

import collections
import contextlib
from typing import TYPE_CHECKING, Any

import outcome
import trio

from snakepit.errors import PoolBroken, PoolClosed, PoolSaturated, SnakepitError

if TYPE_CHECKING:
    from snakepit.worker.calls import Pending, ProgressCallback
    from snakepit.worker.worker import Worker

PIPELINE_BUDGET = 0.001
"""Seconds of expected work (mean service time x calls) a worker's pipe may hold."""


class QueuedCall:
    """A caller parked in the wait queue together with its call.

    When a unit frees, :meth:`Dispatcher.release` sends the call on it at once and the
    caller stays parked until the answer: one task switch a call instead of two (one
    to take the unit, one for the answer), which saves ~3 µs of the host's CPU per
    call when the pool is saturated (docs/performance.md).
    """

    __slots__ = ("args", "attempt", "command", "deadline", "on_progress", "pending", "task",
                 "wall_deadline")

    def __init__(self, command: str, args: Any, deadline: float,
                 on_progress: ProgressCallback | None, attempt: list[Any]) -> None:
        self.command = command
        self.args = args
        self.deadline = deadline
        # Taken now, in the caller's task: the call is sent from another one.
        self.wall_deadline = min(deadline, trio.current_effective_deadline())
        self.on_progress = on_progress
        self.attempt = attempt
        """``[worker, started]``, filled in when the call is sent (for telemetry)."""
        self.task = trio.lowlevel.current_task()
        self.pending: Pending | None = None
        """Set once the call is sent; ``None`` while it waits for a worker."""

    def start(self, worker: Worker) -> None:
        """Send the call on a unit of ``worker`` held for it; the caller stays parked."""
        self.attempt[0] = worker
        self.attempt[1] = trio.current_time()
        try:
            pending = worker.start_call(self.command, self.args, deadline=self.deadline,
                                        effective_deadline=self.wall_deadline)
        except SnakepitError as exc:  # PayloadError: the unit is already returned
            trio.lowlevel.reschedule(self.task, outcome.Error(exc))
            return
        pending.on_progress = self.on_progress
        pending.task = self.task
        self.pending = pending


class Dispatcher:
    """Hands out units of worker capacity to callers, first come first served."""

    def __init__(self, max_queue: int, pipeline_depth: int = 1) -> None:
        self.max_queue = max_queue
        self.pipeline_depth = pipeline_depth
        self._idle: collections.deque[Worker] = collections.deque()
        self._spare: collections.deque[Worker] = collections.deque()
        self._waiters: collections.deque[trio.lowlevel.Task | QueuedCall] = collections.deque()
        # callers that must have one particular worker (strict session affinity)
        self._pinned: dict[Worker, collections.deque[trio.lowlevel.Task]] = {}
        self._units: dict[Worker, int] = {}
        """Units of each worker in circulation (free or held); follows :meth:`_depth`."""
        self._closed = False
        self._broken = False
        self._broken_until: float | None = None
        """When a failed slot tries again (its cool-down's end); ``None``: never."""
        self.mean_service_time = 0.001
        """Moving average of call durations, in seconds; feeds ``retry_after``."""

    @property
    def queue_depth(self) -> int:
        if not self._pinned:
            return len(self._waiters)
        return len(self._waiters) + sum(len(q) for q in self._pinned.values())

    def _depth(self) -> int:
        """Units per unit of concurrency now: deeper while calls are quick."""
        depth = self.pipeline_depth
        if depth <= 2:
            return depth
        return max(2, min(depth, 1 + int(PIPELINE_BUDGET / self.mean_service_time)))

    def add_worker(self, worker: Worker) -> None:
        """A new worker is ready: offer all of its capacity."""
        units = self._units[worker] = worker.capacity * self._depth()
        worker.reserved = units
        for _ in range(units):
            self.release(worker)

    def release(self, worker: Worker) -> None:
        """One unit of ``worker``'s capacity is free again."""
        worker.reserved -= 1
        if not worker.accepting or self._closed:
            return
        if self.pipeline_depth > 2:
            units = self._units.get(worker, 0)
            target = worker.capacity * self._depth()
            if units > target:  # calls got slower: take a unit out of circulation
                if worker.reserved >= worker.capacity:  # this one would be a spare
                    self._units[worker] = units - 1
                    return
                # This one must stay a primary unit (the worker has room), or an idle
                # worker would get calls only when every other is busy: retire one of
                # its waiting spare units instead, or one later if all are in flight.
                with contextlib.suppress(ValueError):
                    self._spare.remove(worker)
                    self._units[worker] = units - 1
            if units < target:  # calls got quicker: put one more unit in circulation
                self._units[worker] = units + 1
                self._offer(worker)
                self._offer(worker, spare=True)  # the new one queues behind a call
                return
        self._offer(worker)

    def _offer(self, worker: Worker, *, spare: bool = False) -> None:
        """Hand a free unit of ``worker`` to whoever waits for it, or keep it: as a
        primary unit while the worker runs fewer calls than its concurrency (and the
        unit is not a ``spare`` one), else as a spare."""
        pinned = self._pinned.get(worker)
        if pinned:
            worker.reserved += 1
            trio.lowlevel.reschedule(pinned.popleft(), outcome.Value(worker))
        elif self._waiters:
            worker.reserved += 1
            waiter = self._waiters.popleft()
            if type(waiter) is QueuedCall:
                waiter.start(worker)
            else:
                trio.lowlevel.reschedule(waiter, outcome.Value(worker))  # type: ignore[arg-type]
        elif not spare and worker.reserved < worker.capacity:
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
        self._units.pop(worker, None)
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
            raise self.broken_error()
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

    async def run_queued(self, queued: QueuedCall) -> Any:
        """Wait in FIFO order for a unit, have the call sent on it, return its answer.

        The caller found no free unit (:meth:`try_acquire`). Cancelled while waiting,
        it leaves the queue (``queued.pending`` is None); cancelled once the call was
        sent, the worker is asked to stop it, as :meth:`Worker.call` does.

        Raises:
            PoolClosed, PoolBroken, PoolSaturated: as :meth:`acquire`.
            PayloadError: the arguments cannot be sent (nothing ran).
            ...and whatever the call itself raises.
        """
        # no checkpoint first: this always parks, and parking delivers a pending cancel
        if self._closed:
            raise PoolClosed("the pool is closed")
        if self._broken:
            raise self.broken_error()
        self._check_room()
        self._waiters.append(queued)

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            if queued.pending is None:
                self._waiters.remove(queued)
            else:
                queued.pending.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            return await trio.lowlevel.wait_task_rescheduled(abort)
        except BaseException:
            pending = queued.pending
            if pending is not None and not pending.answered:
                queued.attempt[0].abandon(pending)  # tell the worker to stop
            raise

    def _fail_waiters(self, error: Exception, *, pinned_too: bool = False) -> None:
        waiters, self._waiters = self._waiters, collections.deque()
        if pinned_too:
            for queue in self._pinned.values():
                waiters.extend(queue)
            self._pinned.clear()
        for waiter in waiters:
            task = waiter.task if type(waiter) is QueuedCall else waiter
            trio.lowlevel.reschedule(task, outcome.Error(error))  # type: ignore[arg-type]

    def mark_broken(self, retry_at: float | None = None) -> None:
        """Every slot has failed: waiting callers and new ones get PoolBroken, whose
        ``retry_after`` counts down to ``retry_at`` (when a slot tries again)."""
        self._broken = True
        self._broken_until = retry_at
        self._fail_waiters(self.broken_error())

    def mark_recovered(self) -> None:
        """A failed slot is starting a worker again: calls wait for it, as in a restart."""
        self._broken = False
        self._broken_until = None

    def broken_error(self) -> PoolBroken:
        until = self._broken_until
        if until is None:
            return PoolBroken("every worker slot has failed past its restart intensity")
        retry_after = max(0.0, until - trio.current_time())
        return PoolBroken("every worker slot has failed past its restart intensity; the "
                          f"first tries again in {retry_after:.1f}s", retry_after=retry_after)

    def close(self) -> None:
        """Refuse new calls; waiting callers get PoolClosed."""
        self._closed = True
        self._idle.clear()
        self._spare.clear()
        self._fail_waiters(PoolClosed("the pool closed while the call waited for a worker"),
                           pinned_too=True)

    def record_service_time(self, seconds: float) -> None:
        self.mean_service_time += (seconds - self.mean_service_time) * 0.05
