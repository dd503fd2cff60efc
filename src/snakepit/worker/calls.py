"""How an answer becomes a value or a typed error, and the chunks of a stream.

The call itself and its life cycle are :mod:`snakepit.worker.lifecycle`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import outcome
import trio

from snakepit.errors import (
    CallCancelled,
    PayloadError,
    ProtocolError,
    QueueTimeout,
    RemoteError,
    SnakepitError,
    UnknownCommand,
)
from snakepit.protocol import wire
from snakepit.protocol.messages import Error

ProgressCallback = Callable[[float, float | None, str | None], None]


def error_from_wire(message: Error) -> SnakepitError:
    """The exception the caller sees for an error frame."""
    kind = message.kind
    if kind == wire.KIND_HANDLER:
        return RemoteError(message.type, message.message, message.traceback,
                           retryable=message.retryable)
    if kind == wire.KIND_UNKNOWN_COMMAND:
        return UnknownCommand("UnknownCommand", message.message)
    if kind == wire.KIND_EXPIRED:
        return QueueTimeout(message.message)
    if kind == wire.KIND_PAYLOAD:
        return PayloadError(message.message)
    if kind == wire.KIND_CANCELLED:
        return CallCancelled(message.message)
    return ProtocolError(f"worker reported {kind!r}: {message.message}")


class ChunkBuffer:
    """The chunks of one streaming call that the consumer has not taken yet.

    Holds at most the credit window: the worker sends a chunk only against credit, and
    credit is granted only for chunks the consumer has taken.
    """

    __slots__ = ("_consumer", "_end", "chunks", "high_water")

    def __init__(self) -> None:
        self.chunks: collections.deque[Any] = collections.deque()
        self._end: outcome.Outcome[Any] | None = None
        self._consumer: trio.lowlevel.Task | None = None
        self.high_water = 0
        """Largest number of chunks ever buffered (observable bound on memory)."""

    def push(self, value: Any) -> None:
        self.chunks.append(value)
        if len(self.chunks) > self.high_water:
            self.high_water = len(self.chunks)
        self._wake()

    def finish(self, end: outcome.Outcome[Any]) -> None:
        self._end = end
        self._wake()

    @property
    def finished(self) -> bool:
        return self._end is not None

    def _wake(self) -> None:
        if self._consumer is not None:
            trio.lowlevel.reschedule(self._consumer)
            self._consumer = None

    async def next(self) -> Any:
        """The next chunk; raises StopAsyncIteration at the end, or the stream's error."""
        while True:
            if self.chunks:
                await trio.lowlevel.checkpoint()
                return self.chunks.popleft()
            if self._end is not None:
                await trio.lowlevel.checkpoint()
                self._end.unwrap()  # raises the stream's error, if any
                raise StopAsyncIteration
            self._consumer = trio.lowlevel.current_task()

            def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
                self._consumer = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
