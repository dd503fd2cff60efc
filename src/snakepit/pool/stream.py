"""The consumer's side of a streaming call, with credit-based flow control."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from snakepit.errors import StreamIdleTimeout
from snakepit.pool.calls import Attempt
from snakepit.pool.tools import lender
from snakepit.worker.lifecycle import abandon, deadline_error
from snakepit.worker.worker import Worker, WorkerCall

if TYPE_CHECKING:
    from snakepit.pool.calls import CallPath
    from snakepit.pool.session import SessionAffinity
    from snakepit.sessions.store import Session

log = logging.getLogger("snakepit.pool")


class ChunkStream:
    """Async iterator over the chunks of one streaming call.

    The worker may have at most ``window`` chunks unconsumed: it starts with that much
    credit and the consumer returns credit in batches of half a window as it takes
    chunks. So a slow consumer bounds both the host's buffer and the worker's output.

    A consumer that takes nothing for ``idle_timeout`` seconds (time spent waiting
    inside a read does not count) gets the stream cancelled by :meth:`watch_idle`: a
    stalled consumer would otherwise hold the worker, whose generator waits for credit,
    until the stream's deadline.
    """

    def __init__(self, worker: Worker, command: str, args: Any, deadline: float,
                 window: int, session_id: str | None = None, movable: bool = True,
                 nest: WorkerCall | None = None) -> None:
        self.deadline = deadline
        self.window = window
        self._pending = worker.start_call(command, args, deadline=deadline, window=window,
                                          session_id=session_id, movable=movable, nest=nest)
        self._taken = 0
        self._batch = max(1, window // 2)
        self.received = 0
        """Chunks the consumer has taken."""
        self._reading = False
        """The consumer waits inside a read: it is not idle."""
        self._idle_since = trio.current_time()
        """When the consumer last left a read (or opened the stream)."""
        self._idle_error: str | None = None
        """Set when the idle limit cut the stream: the message of the
        :class:`StreamIdleTimeout` each later read raises."""
        self._watch: trio.CancelScope | None = None

    @property
    def worker(self) -> Worker:
        """The worker the stream runs on (it may move there from another before it
        starts, if the first gave it back unstarted)."""
        worker = self._pending.worker
        assert worker is not None
        return worker

    @property
    def buffered(self) -> int:
        """Chunks received and not yet taken."""
        assert self._pending.stream is not None
        return len(self._pending.stream.chunks)

    @property
    def high_water(self) -> int:
        """The most chunks ever buffered at once for this stream."""
        assert self._pending.stream is not None
        return self._pending.stream.high_water

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> Any:
        if self._idle_error is not None:
            raise StreamIdleTimeout(self._idle_error)
        buffer = self._pending.stream
        assert buffer is not None
        self._reading = True
        try:
            with trio.CancelScope(deadline=self.deadline) as scope:
                try:
                    value = await buffer.next()
                except StopAsyncIteration:
                    raise
                except BaseException:
                    if not buffer.finished:
                        self.close()
                    raise
                self._taken += 1
                self.received += 1
                if self._taken >= self._batch:
                    self.worker.grant_credit(self._pending, self._taken)
                    self._taken = 0
                return value
        finally:
            self._reading = False
            self._idle_since = trio.current_time()
        assert scope.cancelled_caught
        raise await deadline_error(self._pending, f"stream {self._pending.command!r}")

    def watch_idle(self, nursery: trio.Nursery, idle_timeout: float | None) -> None:
        """Cut the stream once its consumer has taken nothing for ``idle_timeout``
        seconds (``None``: never), with a watcher task in ``nursery`` that lives no
        longer than the stream. One task per stream, none per chunk: a read only notes
        the time it ends."""
        if idle_timeout is None or self._pending.answered:
            return
        self._watch = trio.CancelScope()
        nursery.start_soon(self._watch_idle, self._watch, idle_timeout)

    async def _watch_idle(self, scope: trio.CancelScope, limit: float) -> None:
        with scope:
            while not self._pending.answered:  # once answered, the worker is free anyway
                if self._reading:
                    await trio.sleep(limit)  # looks again at most one limit after it ends
                    continue
                expires = self._idle_since + limit
                if trio.current_time() >= expires:
                    try:
                        self._cut_idle(limit)
                    except Exception:  # a task of the pool's nursery: never take it down
                        log.exception("cancelling an idle stream failed")
                    return
                await trio.sleep_until(expires)

    def _cut_idle(self, limit: float) -> None:
        """The consumer is stalled: cancel the stream in the worker (which frees its
        capacity when the generator has closed, or kills it after ``cancel_grace``),
        drop the chunks it will not take, and fail its next read."""
        pending = self._pending
        log.info("cancelling stream %r on worker %s: its consumer took nothing for %ss "
                 "(stream_idle_timeout)", pending.command, self.worker.id, limit)
        self._idle_error = (f"stream {pending.command!r} on worker {self.worker.id} was "
                            f"cancelled: its consumer took no chunk for {limit}s "
                            "(stream_idle_timeout)")
        if pending.stream is not None:
            pending.stream.chunks.clear()
        abandon(pending)

    def close(self) -> None:
        """Stop the stream early: the worker is told to close its generator."""
        if self._watch is not None:
            self._watch.cancel()
        if not self._pending.answered:
            abandon(self._pending)


@asynccontextmanager
async def open_stream(calls: CallPath, affinity: SessionAffinity, nursery: trio.Nursery,
                      command: str, args: Any, timeout: float | None, window: int | None,
                      session_id: str | None) -> AsyncIterator[ChunkStream]:
    """``Pool.stream``: a worker for the stream (the session's, with ``session_id``), the
    stream's idle watcher in ``nursery``, and its telemetry as one call."""
    config = calls.config
    call_id, submitted = calls.call_started(command, stream=True)
    attempt = Attempt(submitted)
    session: Session | None = None
    try:
        calls.gate.check()
        deadline = calls.deadline(timeout)
        run = lender() if session_id is None else None  # from a host tool: nested
        if run is not None:
            worker = run.worker
        elif session_id is None:
            worker = await calls.acquire(deadline)
        else:
            # In use for the stream's whole life, as a session is for a call's run:
            # its TTL cannot expire (and drop the worker's state) mid-stream.
            session = calls.sessions.touch(session_id)
            session.in_use += 1
            worker = await affinity.acquire(session, deadline)
        stream = ChunkStream(worker, command, args, deadline, window or config.stream_window,
                             session_id, movable=session is None or session.mode != "strict",
                             nest=run.call if run is not None else None)
        attempt.call = stream._pending
        stream.watch_idle(nursery, config.stream_idle_timeout)
        try:
            yield stream
        finally:
            stream.close()
    except BaseException as exc:
        calls.call_failed(exc, command, call_id, submitted, attempt, stream=True)
        raise
    finally:
        if session is not None:
            session.in_use -= 1
            session.last_used = trio.current_time()  # its TTL counts from here
    calls.call_succeeded(command, call_id, submitted, attempt,
                         measurements={"chunks": stream.received}, stream=True)
