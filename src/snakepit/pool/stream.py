"""The consumer's side of a streaming call, with credit-based flow control."""

from __future__ import annotations

from typing import Any

import trio

from snakepit.worker.lifecycle import abandon, deadline_error
from snakepit.worker.worker import Worker


class ChunkStream:
    """Async iterator over the chunks of one streaming call.

    The worker may have at most ``window`` chunks unconsumed: it starts with that much
    credit and the consumer returns credit in batches of half a window as it takes
    chunks. So a slow consumer bounds both the host's buffer and the worker's output.
    """

    def __init__(self, worker: Worker, command: str, args: Any, deadline: float,
                 window: int, session_id: str | None = None, movable: bool = True) -> None:
        self.deadline = deadline
        self.window = window
        self._pending = worker.start_call(command, args, deadline=deadline, window=window,
                                          session_id=session_id, movable=movable)
        self._taken = 0
        self._batch = max(1, window // 2)
        self.received = 0
        """Chunks the consumer has taken."""

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
        buffer = self._pending.stream
        assert buffer is not None
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
        assert scope.cancelled_caught
        raise await deadline_error(self._pending, f"stream {self._pending.command!r}")

    def close(self) -> None:
        """Stop the stream early: the worker is told to close its generator."""
        if not self._pending.answered:
            abandon(self._pending)
