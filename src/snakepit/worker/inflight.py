"""The calls one worker holds, in the order they were sent, and what that order tells.

A worker starts calls in the order they arrive, at most ``capacity`` at once, and each
only after answering an earlier one (the wire's rule, :mod:`snakepit.protocol.wire`).
So, by what the host has read, only the first ``capacity`` unanswered calls may have
started; the rest wait in the worker's pipe. This table keeps each call's
:class:`~snakepit.worker.lifecycle.CallState` true to that rule as calls are sent and
answered, which is what lets the host give never-started calls to another worker.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from snakepit.errors import ProtocolError
from snakepit.worker.lifecycle import Call, CallEvent, CallState


class InFlight:
    """Calls sent to one worker and not answered yet, oldest first."""

    __slots__ = ("_calls", "capacity", "worker_id")

    def __init__(self, worker_id: str, capacity: int = 1) -> None:
        self.worker_id = worker_id
        self.capacity = capacity
        self._calls: dict[int, Call[Any]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[Call[Any]]:
        return iter(self._calls.values())

    def get(self, call_id: int) -> Call[Any] | None:
        return self._calls.get(call_id)

    def add(self, call: Call[Any]) -> None:
        """A call was just sent: it may start at once when the worker has room, else it
        waits behind ``capacity`` unanswered calls."""
        front = len(self._calls) < self.capacity
        call.advance(CallEvent.SEND_FRONT if front else CallEvent.SEND_BEHIND)
        self._calls[call.id] = call

    def remove(self, call_id: int) -> Call[Any]:
        """Take out a call the worker answered (or gave back); the next one in line may
        start now.

        Raises:
            ProtocolError: the worker named a call it does not hold.
        """
        calls = self._calls
        call = calls.pop(call_id, None)
        if call is None:
            raise ProtocolError(f"worker {self.worker_id} answered unknown call id {call_id}")
        if len(calls) >= self.capacity:
            if self.capacity == 1:
                nxt = next(iter(calls.values()))
            else:
                nxt = next(itertools.islice(calls.values(), self.capacity - 1, None))
            if nxt.state is not CallState.STARTED:  # (the table: idempotent otherwise)
                nxt.advance(CallEvent.REACH_FRONT)
        return call

    def may_have_started(self, call: Call[Any]) -> bool:
        """Whether the worker may have started ``call``, by what the host has read:
        fewer than ``capacity`` older calls are unanswered."""
        older = 0
        for other in self._calls.values():
            if other is call or older >= self.capacity:
                break
            older += 1
        return older < self.capacity

    def behind(self) -> list[Call[Any]]:
        """The calls that cannot have started yet (by what the host has read)."""
        return list(itertools.islice(self._calls.values(), self.capacity, None))

    def take_all(self) -> tuple[list[Call[Any]], list[Call[Any]]]:
        """Empty the table (the worker is gone): the calls that may have started, and
        those that cannot have (valid when every frame the worker wrote was read)."""
        calls = list(self._calls.values())
        self._calls.clear()
        return calls[:self.capacity], calls[self.capacity:]
