"""``pool.map``: many items through one command, in batch frames, results in order.

::

    async with pool.map("score", rows, chunksize=None, timeout=60) as results:
        async for r in results:
            ...

How it runs:

- A **feeder** task takes items from the input lazily (any iterable or async
  iterable), groups them into chunks and sends each chunk as one batch call
  (:mod:`snakepit.protocol.wire`: ``call`` with ``batch``, answered by ``results``).
  Each chunk is a :class:`~snakepit.worker.lifecycle.Call` like any other, so it queues,
  pipelines, is withdrawn, stolen and -- when its worker dies before starting it --
  sent to another worker by the same life cycle as a single call. A chunk that had
  started on a worker that died fails as a whole (its items get ``WorkerCrashed``).
- **Backpressure**: at most :data:`CHUNKS_PER_UNIT` chunks per unit of the pool's
  concurrency, plus :data:`EXTRA_CHUNKS`, exist at once -- sent, queued, or answered and
  not yet consumed. The feeder waits for room, so neither a slow consumer nor an
  endless input grows memory: at most ``window * chunksize`` items are held.
- **Chunk size**: explicit sizes are honoured; ``chunksize=None`` aims at
  :data:`CHUNK_SECONDS` of work per chunk, from the pool's measured per-item service
  time and then from this map's own chunks, growing at most :data:`GROWTH` times per
  chunk (so a handler slower than it looks does not get a huge first chunk).
- **Order and errors**: results come in input order. An item that raised raises its
  :class:`~snakepit.errors.RemoteError` at its position (the map is then over), or with
  ``return_exceptions=True`` takes its place as the exception object. An error for a
  whole chunk (unknown command, worker crashed, result too large) stands for each of
  its items. Errors of the map itself (its deadline, the pool closing, the input
  raising) always raise.
- **Enhanced-bridge targets**: ``pool.map("call", ({"target": "math.sqrt", "args": [x]}
  for x in xs))`` runs the enhanced bridge's ``call`` command per item; its results are
  read as ``pool.call`` reads them (objects that cannot travel come back as
  :class:`~snakepit.Ref`, released when the host drops them; serializer plugins decode
  tagged values).
- **One deadline** for the whole map. Leaving the block early, an error, or a cancelled
  caller abandons every chunk not yet answered: queued ones leave the queue, those
  waiting in a worker's pipe are refused there, and a running one is cancelled (the
  worker looks for the cancel between items), exactly as for an abandoned call.

The consumer takes the items of an answered chunk without a checkpoint per item (a
Trio checkpoint costs a scheduler round, ~5-10 µs on the reference box, which is ten
times an item's cost); it checkpoints once per chunk.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import outcome
import trio

from snakepit.errors import ConfigError, ProtocolError, QueueTimeout, RemoteError, SnakepitError
from snakepit.protocol import wire
from snakepit.protocol.messages import Results
from snakepit.worker.lifecycle import Call, abandon, deadline_error

if TYPE_CHECKING:
    from snakepit.pool.calls import CallPath
    from snakepit.pool.dynamic import DynamicCalls
    from snakepit.sessions.store import Session
    from snakepit.worker.worker import Worker, WorkerCall

ENHANCED_CALL = "call"
"""The enhanced bridge's dynamic call: a map of it reads refs and tagged values."""
CHUNK_SECONDS = 0.001
"""Work per chunk ``chunksize=None`` aims at: the pipeline budget of one call."""
MAX_CHUNKSIZE = 4096
"""Largest chunk ``chunksize=None`` picks."""
GROWTH = 4
"""An automatic chunk is at most this many times the largest one answered before."""
CHUNKS_PER_UNIT = 2
"""Chunks per unit of concurrency in flight: one running, one waiting in the pipe."""
EXTRA_CHUNKS = 2
"""Chunks beyond those, answered and waiting for the consumer."""


class MapResults:
    """The results of one ``pool.map``, in input order: ``async for r in results``."""

    def __init__(self, calls: CallPath, dynamic: DynamicCalls, capacity: int, command: str,
                 chunksize: int | None, deadline: float, return_exceptions: bool,
                 session: Session | None) -> None:
        self._calls = calls
        self._dynamic = dynamic
        self._command = command
        self._fixed = chunksize
        self._deadline = deadline
        self._effective = min(deadline, trio.current_effective_deadline())
        self._return_exceptions = return_exceptions
        self._session = session
        self.window = CHUNKS_PER_UNIT * max(1, capacity) + EXTRA_CHUNKS
        """Most chunks that exist at once (sent, queued, or answered and not consumed)."""
        self._pending: collections.deque[WorkerCall] = collections.deque()
        self._values: list[Any] = []
        self._errors: dict[int, BaseException] = {}
        self._chunk_error: BaseException | None = None
        self._position = 0
        self._input_done = False
        self._feed_error: BaseException | None = None
        self._finished = False
        self._consumer_lot = trio.lowlevel.ParkingLot()
        self._room_lot = trio.lowlevel.ParkingLot()
        self._feed_scope = trio.CancelScope()
        self._per_item = calls.dispatcher.mean_service_time
        self._largest_answered = 0
        self.items_sent = 0
        """Items taken from the input and sent so far."""
        self.chunks_sent = 0
        self.high_water = 0
        """Most chunks that existed at once (at most :attr:`window`)."""

    # -- chunk size --------------------------------------------------------------------
    def _next_size(self) -> int:
        if self._fixed is not None:
            return self._fixed
        size = int(CHUNK_SECONDS / max(self._per_item, 1e-7))
        size = min(size, MAX_CHUNKSIZE, max(1, self._largest_answered * GROWTH))
        return max(1, size)

    def _learn(self, call: WorkerCall, ran: float | None) -> None:
        """A chunk was answered: update the per-item estimate from how long it ran --
        by the worker's own clock when it says (``ran``), else from when the host saw
        it start and end, which a loaded host stretches."""
        n = call.batch
        if n > self._largest_answered:
            self._largest_answered = n
        took = ran if ran is not None and ran >= 0 else call.ran_for
        if took > 0:
            self._per_item += (took / n - self._per_item) * 0.5

    # -- the feeder --------------------------------------------------------------------
    async def feed(self, items: Iterable[Any] | AsyncIterable[Any]) -> None:
        """Take items, send chunks, wait for room; until the input ends or fails."""
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

    async def _send(self, chunk: list[Any]) -> None:
        """Send one chunk as a batch call (on a free unit, or queued for one)."""
        calls, session = self._calls, self._session
        if self._finished:
            return
        calls.gate.check()
        strict = session is not None and session.mode == "strict"
        call: WorkerCall = Call(self._command, chunk, self._deadline, batch=len(chunk),
                                session_id=session.id if session else None,
                                effective_deadline=self._effective, movable=not strict)
        if session is None:
            worker = calls.dispatcher.try_acquire()
            if worker is None:
                calls.dispatcher.queue(call)  # raises PoolSaturated, PoolClosed...
            else:
                _send_on(worker, call)
        else:
            worker = await calls.affinity.acquire(session, self._deadline)
            if self._finished:  # the consumer left while we waited for the unit
                calls.dispatcher.release(worker)
                return
            if not strict:
                call.on_moved = lambda moved: calls.sessions.visit(session, moved.id, moved.pid)
            _send_on(worker, call)
        self._pending.append(call)
        self.items_sent += len(chunk)
        self.chunks_sent += 1
        if len(self._pending) > self.high_water:
            self.high_water = len(self._pending)
        self._consumer_lot.unpark_all()

    # -- the consumer ------------------------------------------------------------------
    def __aiter__(self) -> MapResults:
        return self

    async def __anext__(self) -> Any:
        position = self._position
        if position < len(self._values):
            self._position = position + 1
            if self._chunk_error is not None:
                return self._item_error(self._chunk_error)
            if self._errors:
                error = self._errors.get(position)
                if error is not None:
                    return self._item_error(error)
            return self._values[position]
        if self._finished:
            raise StopAsyncIteration
        await self._next_chunk()
        return await self.__anext__()

    def _item_error(self, error: BaseException) -> BaseException:
        if self._return_exceptions:
            return error
        self._finish()
        raise error

    async def _next_chunk(self) -> None:
        """Wait for the oldest chunk's answer and make its items current."""
        try:
            while not self._pending:
                if self._input_done:
                    self._finish()
                    if self._feed_error is not None:
                        raise self._feed_error
                    raise StopAsyncIteration
                with trio.CancelScope(deadline=self._deadline) as scope:
                    await self._consumer_lot.park()
                if scope.cancelled_caught:
                    raise QueueTimeout("the map's deadline passed while it waited for its "
                                       "input")
            head = self._pending[0]
            answer = await self._answer_of(head)
        except BaseException:
            self._finish()
            raise
        self._pending.popleft()
        self._room_lot.unpark_all()
        self._position = 0
        self._errors = {}
        self._chunk_error = None
        if isinstance(answer, outcome.Value) and isinstance(answer.value, Results):
            self._take(head, answer.value)
        else:
            error = answer.error if isinstance(answer, outcome.Error) else SnakepitError(
                f"worker answered batch call {head.command!r} with a single result")
            if not isinstance(error, SnakepitError) or trio.current_time() >= self._deadline:
                self._finish()
                raise error
            self._values = [None] * head.batch
            self._chunk_error = error

    async def _answer_of(self, call: WorkerCall) -> outcome.Outcome[Any]:
        """The chunk's answer as an outcome; raises only for the map's deadline (or a
        cancelled caller).

        Raises:
            QueueTimeout, WorkerTimeout, WorkerCrashedBeforeStart: the map's deadline
                passed while this chunk waited or ran (see ``deadline_error``).
        """
        if math.isinf(self._deadline):
            return await _capture(call)
        with trio.CancelScope(deadline=self._deadline):
            return await _capture(call)
        self._finish()  # every chunk is given up before anything else can start
        raise await deadline_error(call, f"map of {call.command!r}")

    def _take(self, call: WorkerCall, results: Results) -> None:
        values = results.values
        if len(values) != call.batch:
            self._finish()
            raise ProtocolError(f"batch call {call.command!r} of {call.batch} items was "
                                f"answered with {len(values)} values")
        if self._command == ENHANCED_CALL and call.worker is not None:
            values = self._dynamic.values_from(values, call.worker,
                                               self._session.id if self._session else None)
        self._values = values
        self._learn(call, results.ran if type(results.ran) is float else None)
        for entry in results.errors or ():
            index, kind, etype, message, tb, retryable = (list(entry) + [""] * 6)[:6]
            error: SnakepitError = (RemoteError(str(etype), str(message), str(tb),
                                                retryable=retryable is True)
                                    if kind == wire.KIND_HANDLER
                                    else SnakepitError(f"{kind}: {message}"))
            if type(index) is int:
                self._errors[index] = error

    def _finish(self) -> None:
        """No more results: stop feeding, abandon every chunk not answered."""
        if self._finished:
            return
        self._finished = True
        self._values, self._position = [], 0
        self._feed_scope.cancel()
        pending, self._pending = self._pending, collections.deque()
        for call in pending:
            if not call.answered:
                abandon(call)
        self._room_lot.unpark_all()


async def _capture(call: WorkerCall) -> outcome.Outcome[Any]:
    try:
        return outcome.Value(await call.wait())
    except SnakepitError as exc:
        return outcome.Error(exc)
    except BaseException:  # cancelled: give the chunk up
        if not call.answered:
            abandon(call)
        raise


def _send_on(worker: Worker, call: WorkerCall) -> None:
    """Send ``call`` on a unit of ``worker`` held for it; a chunk that cannot be sent
    (too large, a worker without batches) fails as a whole instead of the map."""
    try:
        worker.send_call(call)
    except SnakepitError as exc:  # the unit is already returned
        call.fail(exc)


@asynccontextmanager
async def open_map(calls: CallPath, dynamic: DynamicCalls, nursery: trio.Nursery,
                   capacity: int, command: str, items: Iterable[Any] | AsyncIterable[Any], *,
                   chunksize: int | None, timeout: float | None, return_exceptions: bool,
                   session_id: str | None = None) -> AsyncIterator[MapResults]:
    """See :meth:`snakepit.Pool.map`; ``capacity``: calls the workers run at once."""
    if chunksize is not None and (type(chunksize) is not int or chunksize < 1):
        raise ConfigError([f"chunksize: must be an int >= 1 or None (got {chunksize!r})"])
    calls.gate.check()
    deadline = calls.deadline(timeout)
    session = None
    if session_id is not None:
        session = calls.sessions.touch(session_id)
        session.in_use += 1
    try:
        results = MapResults(calls, dynamic, capacity, command, chunksize, deadline,
                             return_exceptions, session)
        nursery.start_soon(results.feed, items)
        try:
            yield results
        finally:
            results._finish()
    finally:
        if session is not None:
            session.in_use -= 1
            session.last_used = trio.current_time()
