"""``pool.map``: many items through one command, in batch frames, results in order.

::

    async with pool.map("score", rows, chunksize=None, timeout=60) as results:
        async for r in results:
            ...

How it runs:

- The **feed** (:mod:`snakepit.pool.map_feed`) takes items from the input lazily (any
  iterable or async iterable), groups them into chunks and sends each chunk as one
  batch call
  (:mod:`snakepit.protocol.wire`: ``call`` with ``batch``, answered by ``results``).
  Each chunk is a :class:`~snakepit.worker.lifecycle.Call` like any other, so it queues,
  pipelines, is withdrawn, stolen and -- when its worker dies before starting it --
  sent to another worker by the same life cycle as a single call. A chunk that had
  started on a worker that died fails as a whole (its items get ``WorkerCrashed``).
- **Backpressure**: at most two chunks per unit of the pool's concurrency, plus two,
  exist at once -- sent, queued, or answered and not yet consumed. The feed waits for
  room, so neither a slow consumer nor an endless input grows memory: at most
  ``window * chunksize`` items are held.
- **Chunk size**: explicit sizes are honoured; ``chunksize=None`` aims at about a
  millisecond of work per chunk while others share the pool, and more while the map
  has it to itself (:mod:`snakepit.pool.chunking`), from the pool's measured per-item
  service time and then from this map's own chunks.
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

The consumer (:class:`MapResults`) takes the items of an answered chunk without a
checkpoint per item (a Trio checkpoint costs a scheduler round, ~5-10 µs on the
reference box, ten times an item's cost); it checkpoints once per chunk, and refills
the window from a plain input as it does.
"""

from __future__ import annotations

import collections
import math
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Iterable,
)
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import outcome
import trio

from snakepit.errors import ConfigError, ProtocolError, QueueTimeout, RemoteError, SnakepitError
from snakepit.pool.map_feed import MapFeed
from snakepit.protocol import wire
from snakepit.protocol.messages import Results
from snakepit.worker.lifecycle import abandon, deadline_error

if TYPE_CHECKING:
    from snakepit.pool.calls import CallPath
    from snakepit.pool.dynamic import DynamicCalls
    from snakepit.sessions.store import Session
    from snakepit.worker.worker import WorkerCall

ENHANCED_CALL = "call"
"""The enhanced bridge's dynamic call: a map of it reads refs and tagged values."""


class MapResults(MapFeed):
    """The results of one ``pool.map``, in input order: ``async for r in results``."""

    def __init__(self, calls: CallPath, dynamic: DynamicCalls, capacity: int, command: str,
                 chunksize: int | None, deadline: float, return_exceptions: bool,
                 session: Session | None) -> None:
        super().__init__(calls, capacity, command, chunksize, deadline, session)
        self._dynamic = dynamic
        self._return_exceptions = return_exceptions
        self._values: list[Any] = []
        self._errors: dict[int, BaseException] = {}
        self._chunk_error: BaseException | None = None
        self._generator: AsyncGenerator[Any, None] | None = None

    # -- the consumer ------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Any]:
        return self._results()

    def __anext__(self) -> Awaitable[Any]:
        return self._results().__anext__()

    def _results(self) -> AsyncGenerator[Any, None]:
        """The one generator behind ``async for`` and ``__anext__``."""
        if self._generator is None:
            self._generator = self._each()
        return self._generator

    async def _each(self) -> AsyncGenerator[Any, None]:
        """Every result in input order. A generator, because resuming one costs about
        half of what an ``async def __anext__`` does per item (~0.12 against ~0.22 µs on
        the reference box), and a chunk without errors is yielded by a plain loop."""
        while True:
            values, errors, chunk_error = self._values, self._errors, self._chunk_error
            if chunk_error is None and not errors:
                for value in values:
                    if self._finished:
                        return
                    yield value
            else:
                for position, value in enumerate(values):
                    if self._finished:
                        return
                    error = chunk_error or errors.get(position)
                    yield value if error is None else self._item_error(error)
            if self._finished or not await self._next_chunk():
                return

    def _item_error(self, error: BaseException) -> BaseException:
        if self._return_exceptions:
            return error
        self._finish()
        raise error

    async def _next_chunk(self) -> bool:
        """Wait for the oldest chunk's answer and make its items current; ``False``
        when every chunk has been taken."""
        try:
            while not self._pending:
                if self._input_done:
                    self._finish()
                    if self._feed_error is not None:
                        raise self._feed_error
                    return False
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
        if self._iterator is not None:
            self._refill()
        else:
            self._room_lot.unpark_all()
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
        return True

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
        self._values, self._iterator = [], None
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
        results.start(nursery, items)
        try:
            yield results
        finally:
            results._finish()
    finally:
        if session is not None:
            session.in_use -= 1
            session.last_used = trio.current_time()
