"""FIFO hand-out of worker capacity, with a bounded wait queue.

A worker with concurrency *c* contributes *c* **primary** units (it runs that many
calls at once) and up to ``c * (pipeline_depth - 1)`` **spare** units (calls queued in
its pipe behind a running one, so it never idles waiting for the host's round trip --
DESIGN.md measured pipelining as the big lever). A caller takes a primary unit when
one is free, a spare one only when every worker is busy, and otherwise parks in FIFO
order; a released unit is handed straight to the first waiter (no thundering herd).

How deep the pipes go, and which call a free worker takes from another's pipe, is
:mod:`snakepit.pool.pipelining`'s policy; calls given back unstarted come back here
(:meth:`Dispatcher.requeue`) and go first in line.
"""

from __future__ import annotations

import collections
import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

import outcome
import trio

from snakepit.errors import (
    PoolBroken,
    PoolClosed,
    PoolSaturated,
    QueueTimeout,
    SnakepitError,
    WorkerCrashedBeforeStart,
)
from snakepit.pool.pipelining import ServiceTime, steal_for
from snakepit.worker.lifecycle import Call, CallEvent

if TYPE_CHECKING:
    from snakepit.worker.worker import Worker, WorkerCall



class Dispatcher:
    """Hands out units of worker capacity to callers, first come first served."""

    def __init__(self, max_queue: int, pipeline_depth: int = 1) -> None:
        self.max_queue = max_queue
        self.pipeline_depth = pipeline_depth
        self._idle: collections.deque[Worker] = collections.deque()
        self._spare: collections.deque[Worker] = collections.deque()
        self._waiters: collections.deque[trio.lowlevel.Task | WorkerCall] = collections.deque()
        self._pinned: dict[Worker, collections.deque[trio.lowlevel.Task]] = {}  # strict sessions
        self._units: dict[Worker, int] = {}
        """Units of each worker in circulation (free or held); follows :meth:`_depth`."""
        self._workers: list[Worker] = []
        """Workers whose capacity is in circulation (where a free one may steal from)."""
        self._closed = False
        self._broken = False
        self._broken_until: float | None = None
        """When a failed slot tries again (its cool-down's end); ``None``: never."""
        self.service = ServiceTime(pipeline_depth)
        """How long handlers run, and the pipeline depth that sets."""

    @property
    def queue_depth(self) -> int:
        if not self._pinned:
            return len(self._waiters)
        return len(self._waiters) + sum(len(q) for q in self._pinned.values())

    def outstanding(self) -> int:
        """Calls queued or in a worker now (a map compares this with its own chunks)."""
        return self.queue_depth + sum(len(worker.inflight) for worker in self._workers)

    @property
    def mean_service_time(self) -> float:
        """Moving average of how long handlers run, in seconds (:class:`ServiceTime`);
        sets the pipeline's depth and ``retry_after``."""
        return self.service.mean

    @mean_service_time.setter
    def mean_service_time(self, seconds: float) -> None:
        self.service.mean = seconds

    def _depth(self) -> int:
        """Units per unit of concurrency now: deeper while calls are quick."""
        return self.service.depth

    def add_worker(self, worker: Worker) -> None:
        """A new worker is ready: offer all of its capacity."""
        worker.seat = self
        self._workers.append(worker)
        units = self._units[worker] = worker.capacity * self._depth()
        worker.reserved = units
        for _ in range(units):
            self.release(worker)

    def release(self, worker: Worker) -> None:
        """One unit of ``worker``'s capacity is free again."""
        worker.reserved -= 1
        if not worker.accepting or self._closed:
            return
        if worker.recall.holds:  # it may be stuck on an abandoned call: keep it back
            worker.parked += 1
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
        unit is not a ``spare`` one), else as a spare. A worker that stopped taking
        calls meanwhile (the call this release just sent reached its ``max_calls``)
        keeps the unit out of circulation."""
        if not worker.accepting:
            return
        pinned = self._pinned.get(worker)
        if pinned:
            worker.reserved += 1
            trio.lowlevel.reschedule(pinned.popleft(), outcome.Value(worker))
        elif self._waiters:
            worker.reserved += 1
            waiter = self._waiters.popleft()
            if type(waiter) is Call:
                self._send(waiter, worker)
            else:
                trio.lowlevel.reschedule(waiter, outcome.Value(worker))  # type: ignore[arg-type]
        elif not spare and worker.reserved < worker.capacity:
            self._idle.append(worker)
            if len(self._workers) > 1:
                steal_for(worker, self._workers)  # back through requeue
        else:
            self._spare.append(worker)

    def _send(self, call: WorkerCall, worker: Worker) -> None:
        """Send a queued call on a unit of ``worker`` held for it."""
        call.unqueue = None
        try:
            worker.send_call(call)
        except SnakepitError as exc:  # PayloadError: the unit is already returned
            call.fail(exc)
            return
        if call.on_moved is not None:
            call.on_moved(worker)

    def requeue(self, call: WorkerCall) -> None:
        """``call`` never started on its worker (which died, retired, or gave it back):
        send it on a free unit, or put it first in line, with its own deadline.

        It fails with :class:`WorkerCrashedBeforeStart` only when the pool has closed
        or its deadline has passed.
        """
        why = None
        if self._closed or self._broken:
            why = (f"the pool {'closed' if self._closed else 'broke'} before another "
                   "worker could take it")
        elif call.wall_deadline is not None and time.time() >= call.wall_deadline:
            why = "its deadline has passed"
        if why is not None:
            call.fail(WorkerCrashedBeforeStart(
                f"call {call.command!r} never started on worker "
                f"{call.worker.id if call.worker else '?'}, and {why}"))
            return
        worker = self._take_unit()
        if worker is not None:
            self._send(call, worker)
            return
        call.unqueue = self._unqueue
        self._waiters.appendleft(call)

    def _unqueue(self, call: WorkerCall) -> None:
        """Its caller gave up while the call waited in the queue."""
        self._waiters.remove(call)
        call.unqueue = None
        call.advance(CallEvent.ABANDON)

    def resume(self, worker: Worker) -> None:
        """``worker`` is no longer held: hand out the units kept back meanwhile."""
        parked, worker.parked = worker.parked, 0
        for _ in range(parked):
            worker.reserved += 1
            self.release(worker)

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
                    if worker.recall.holds:  # keep it back until the worker is resumed
                        worker.parked += 1
                        continue
                    worker.reserved += 1
                    return worker
        return None

    def try_acquire_worker(self, worker: Worker, *, primary_only: bool = False) -> bool:
        """Take a free unit of this particular worker, without waiting.

        ``primary_only`` refuses a pipelined unit (one that would queue behind a call
        already running on the worker).
        """
        if not worker.available or self._pinned.get(worker):
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
        with contextlib.suppress(ValueError):
            self._workers.remove(worker)
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
            if worker.available:
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
            if worker.available:
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

    def queue(self, call: WorkerCall) -> None:
        """No unit was free (:meth:`try_acquire`): the call waits in FIFO order and is
        sent as soon as one frees. Its caller waits for its answer
        (:func:`~snakepit.worker.lifecycle.wait_for_answer`); cancelled while the call
        is still queued, it leaves the queue.

        Raises:
            PoolClosed, PoolBroken, PoolSaturated: as :meth:`acquire`.
        """
        if self._closed:
            raise PoolClosed("the pool is closed")
        if self._broken:
            raise self.broken_error()
        self._check_room()
        call.unqueue = self._unqueue
        self._waiters.append(call)

    async def acquire_until(self, deadline: float, worker: Worker | None = None) -> Worker:
        """:meth:`acquire` (or, for ``worker``, :meth:`acquire_worker`) within ``deadline``.

        Raises:
            QueueTimeout: the deadline passed first.
            PoolClosed, PoolBroken, PoolSaturated, SessionWorkerLost: as those do.
        """
        if worker is None:
            found = self.try_acquire()
            if found is not None:
                return found
        if math.isinf(deadline):
            return await (self.acquire() if worker is None else self.acquire_worker(worker))
        with trio.CancelScope(deadline=deadline):
            found = await (self.acquire() if worker is None else self.acquire_worker(worker))
            if trio.current_time() < deadline:
                return found
            self.release(found)  # handed over just as the deadline passed
        raise QueueTimeout("the call's deadline passed while it waited for a worker")

    def _fail_waiters(self, error: SnakepitError, *, pinned_too: bool = False) -> None:
        waiters, self._waiters = self._waiters, collections.deque()
        if pinned_too:
            for queue in self._pinned.values():
                waiters.extend(queue)
            self._pinned.clear()
        for waiter in waiters:
            if type(waiter) is Call:
                waiter.unqueue = None
                waiter.fail(WorkerCrashedBeforeStart(f"call {waiter.command!r} was given back "
                                                     f"unstarted by a worker that died: {error}")
                            if waiter.bounced else error)
            else:
                trio.lowlevel.reschedule(waiter, outcome.Error(error))  # type: ignore[arg-type]

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
        self.service.record(seconds)
