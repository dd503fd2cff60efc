"""The sending half of ``pool.map``: items into chunks, chunks into batch calls.

:class:`MapFeed` takes items from the input lazily, groups them into chunks
(:mod:`snakepit.pool.chunking` sizes them) and sends each as one batch call, keeping at
most :attr:`MapFeed.window` chunks in existence. A plain iterable outside a session is
fed by the consumer as it takes each chunk; an async iterable or a session's map gets a
feeder task. :class:`~snakepit.pool.mapping.MapResults` is the half that takes the
answers, in order.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any

import trio

from snakepit.errors import SnakepitError
from snakepit.pool.chunking import ChunkSizer
from snakepit.worker.lifecycle import Call

if TYPE_CHECKING:
    from snakepit.pool.calls import CallPath
    from snakepit.sessions.store import Session
    from snakepit.worker.worker import Worker, WorkerCall

CHUNKS_PER_UNIT = 2
"""Chunks per unit of concurrency in flight: one running, one waiting in the pipe."""
EXTRA_CHUNKS = 2
"""Chunks beyond those, answered and waiting for the consumer."""


class MapFeed:
    """Sends a map's chunks; the consumer (a subclass) takes them from ``_pending``."""

    def __init__(self, calls: CallPath, capacity: int, command: str, chunksize: int | None,
                 deadline: float, session: Session | None) -> None:
        self._calls = calls
        self._command = command
        self._deadline = deadline
        self._effective = min(deadline, trio.current_effective_deadline())
        self._session = session
        self.window = CHUNKS_PER_UNIT * max(1, capacity) + EXTRA_CHUNKS
        """Most chunks that exist at once (sent, queued, or answered and not consumed)."""
        self._pending: collections.deque[WorkerCall] = collections.deque()
        """Chunks sent or queued, oldest first, until the consumer takes their answers."""
        self._input_done = False
        self._feed_error: BaseException | None = None
        self._finished = False
        self._consumer_lot = trio.lowlevel.ParkingLot()
        self._room_lot = trio.lowlevel.ParkingLot()
        self._feed_scope = trio.CancelScope()
        self._iterator: Iterator[Any] | None = None
        """A plain input the consumer feeds from (:meth:`start`)."""
        self._sizer = ChunkSizer(chunksize, calls.dispatcher.mean_service_time, capacity)
        self._length: int | None = None
        """How many items a sized input holds (``len``), else ``None``."""
        self.items_sent = 0
        """Items taken from the input and sent so far."""
        self.chunks_sent = 0
        self.last_chunksize = 0
        """Items in the latest chunk sent (with ``chunksize=None``: the size chosen)."""
        self.high_water = 0
        """Most chunks that existed at once (at most :attr:`window`)."""

    # -- chunk size --------------------------------------------------------------------
    def _next_size(self) -> int:
        sizer = self._sizer
        if sizer.fixed is not None:
            return sizer.fixed
        mine = 0
        for call in self._pending:
            if not call.answered:
                mine += 1
        alone = self._calls.dispatcher.outstanding() <= mine
        length = self._length
        return sizer.next_size(alone=alone,
                               remaining=None if length is None else length - self.items_sent)

    def _learn(self, call: WorkerCall, ran: float | None) -> None:
        """A chunk was answered: update the per-item estimate from how long it ran --
        by the worker's own clock when it says (``ran``), else from when the host saw
        it start and end, which a loaded host stretches."""
        self._sizer.learn(call.batch, ran if ran is not None and ran >= 0 else call.ran_for)

    # -- the feeder ------------------------------------------------------------------
    def start(self, nursery: trio.Nursery, items: Iterable[Any] | AsyncIterable[Any]) -> None:
        """Begin sending chunks. A plain iterable outside a session is fed by the
        consumer itself, as it takes each chunk (:meth:`_refill`: no await is needed, and
        a feeder task would cost a scheduler round per chunk); an async iterable, or a
        session's map (which may wait for its worker), gets a feeder task."""
        if isinstance(items, Sized):
            try:
                self._length = len(items)
            except Exception:  # a sized type whose len() fails: sized by service time only
                self._length = None
        if self._session is None and not isinstance(items, AsyncIterable):
            try:
                self._iterator = iter(items)
            except Exception as exc:
                self._feed_error, self._input_done = exc, True
                return
            self._refill()
        else:
            nursery.start_soon(self.feed, items)

    def _refill(self) -> None:
        """Send chunks of the plain input until the window is full or the input ends."""
        iterator = self._iterator
        if iterator is None:
            return
        try:
            while len(self._pending) < self.window and not self._finished:
                chunk = list(itertools.islice(iterator, self._next_size()))
                if not chunk:
                    break
                self._send_now(chunk)
            else:
                return
        except Exception as exc:  # the input raised, or the pool refused the chunk
            self._feed_error = exc
        self._iterator = None
        self._input_done = True

    async def feed(self, items: Iterable[Any] | AsyncIterable[Any]) -> None:
        """The feeder task: take items, send chunks, wait for room; until the input
        ends or fails."""
        with self._feed_scope:
            try:
                if isinstance(items, AsyncIterable):
                    await self._feed_async(items.__aiter__())
                else:
                    await self._feed_sync(iter(items))
            except Exception as exc:  # the input raised, or the pool refused the chunk
                self._feed_error = exc
            finally:
                self._input_done = True
                self._consumer_lot.unpark_all()

    async def _wait_for_room(self) -> None:
        while len(self._pending) >= self.window and not self._finished:
            await self._room_lot.park()

    async def _feed_sync(self, iterator: Iterator[Any]) -> None:
        while not self._finished:
            await self._wait_for_room()
            chunk = list(itertools.islice(iterator, self._next_size()))
            if not chunk:
                return
            await self._send(chunk)

    async def _feed_async(self, iterator: AsyncIterator[Any]) -> None:
        while not self._finished:
            await self._wait_for_room()
            size, chunk = self._next_size(), list[Any]()
            try:
                while len(chunk) < size and not self._finished:
                    chunk.append(await iterator.__anext__())
            except StopAsyncIteration:
                if chunk:
                    await self._send(chunk)
                return
            await self._send(chunk)

    def _new_call(self, chunk: list[Any]) -> WorkerCall:
        session = self._session
        strict = session is not None and session.mode == "strict"
        return Call(self._command, chunk, self._deadline, batch=len(chunk),
                    session_id=session.id if session else None,
                    effective_deadline=self._effective, movable=not strict)

    def _send_now(self, chunk: list[Any]) -> None:
        """Send one chunk as a batch call on a free unit, or queue it for one."""
        calls = self._calls
        calls.gate.check()
        call = self._new_call(chunk)
        worker = calls.dispatcher.try_acquire()
        if worker is None:
            calls.dispatcher.queue(call)  # raises PoolSaturated, PoolClosed...
        else:
            _send_on(worker, call)
        self._sent(call)

    async def _send(self, chunk: list[Any]) -> None:
        """The feeder task's send: a session's chunk waits for the session's worker."""
        calls, session = self._calls, self._session
        if self._finished:
            return
        if session is None:
            self._send_now(chunk)
            return
        calls.gate.check()
        call = self._new_call(chunk)
        worker = await calls.affinity.acquire(session, self._deadline)
        if self._finished:  # the consumer left while we waited for the unit
            calls.dispatcher.release(worker)
            return
        if session.mode != "strict":
            call.on_moved = lambda moved: calls.sessions.visit(session, moved.id, moved.pid)
        _send_on(worker, call)
        self._sent(call)

    def _sent(self, call: WorkerCall) -> None:
        self._pending.append(call)
        self.items_sent += call.batch
        self.chunks_sent += 1
        self.last_chunksize = call.batch
        if len(self._pending) > self.high_water:
            self.high_water = len(self._pending)
        self._consumer_lot.unpark_all()


def _send_on(worker: Worker, call: WorkerCall) -> None:
    """Send ``call`` on a unit of ``worker`` held for it; a chunk that cannot be sent
    (too large, a worker without batches) fails as a whole instead of the map."""
    try:
        worker.send_call(call)
    except SnakepitError as exc:  # the unit is already returned
        call.fail(exc)
