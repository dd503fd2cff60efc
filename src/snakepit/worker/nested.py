"""Calls a worker runs outside its capacity units: nested calls and set-up calls.

- A **nested** call was made by a host tool while the call that waits for the tool
  holds one of the worker's units. It is sent flagged ``nest: <that call>``, and the
  worker runs it at once on the waiting call's thread (see
  :mod:`snakepit.bridge.hostcalls`): the waiting call lends its capacity, like a frame
  of a call stack.
- A **set-up** call (``pool.setup``) runs on a new worker before it is given any unit:
  nothing else is in flight on it.

Either way the call starts out of the order the ordering rule of
:mod:`snakepit.worker.inflight` reads, so it is kept apart from it: it is STARTED the
moment it is sent, holds no unit, is never withdrawn or moved, and is not counted among
the calls that decide which positional calls may have started. When the worker dies
it fails with the worker's error (it may have run); the positional calls are judged by
their own order as before.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from snakepit.errors import SnakepitError
from snakepit.protocol.messages import Cancel, call_to_wire
from snakepit.worker.lifecycle import Call, CallEvent

if TYPE_CHECKING:
    from snakepit.protocol.messages import Emit, HostCall





class HostSide(Protocol):
    """What serves a worker's host calls and events (the pool's
    :class:`~snakepit.pool.tools.ToolBox`)."""

    runs: dict[Any, Any]
    """Host tools running, by the call they run for (empty: nothing to stop)."""

    def host_call(self, worker: Any, message: HostCall) -> None: ...

    def emitted(self, worker: Any, message: Emit) -> None: ...

    def call_ended(self, call: Call[Any]) -> None: ...


class NestedCalls:
    """The unit-less calls one worker holds, by wire id."""

    __slots__ = ("calls", "worker")

    def __init__(self, worker: Any) -> None:
        """``worker``: the :class:`~snakepit.worker.worker.Worker` that holds them."""
        self.worker = worker
        self.calls: dict[int, Call[Any]] = {}

    def __len__(self) -> int:
        return len(self.calls)

    def __iter__(self) -> Iterator[Call[Any]]:
        return iter(list(self.calls.values()))

    def __contains__(self, call: Call[Any]) -> bool:
        return call.worker is self.worker and self.calls.get(call.id) is call

    def get(self, call_id: int) -> Call[Any] | None:
        return self.calls.get(call_id) if self.calls else None

    def send(self, call: Call[Any], ids: itertools.count[int], nest: Call[Any] | None) -> None:
        """Send ``call`` now, nested in ``nest`` (``None``: a set-up call).

        Raises:
            PayloadError: the arguments cannot be encoded or are too large.
        """
        worker = self.worker
        call_id = next(ids)
        data = call_to_wire(call_id, call.command, call.args, call.session_id,
                            call.wall_deadline, call.window)
        if nest is not None:
            data["nest"] = nest.id
        worker.connection.send_map(data)
        call.id = call_id
        call.worker = worker
        call.movable = False
        call.advance(CallEvent.SEND_FRONT)  # started at once: no unit, no order
        self.calls[call_id] = call

    def take(self, call_id: int) -> Call[Any] | None:
        """Remove the call ``call_id`` if it is one of these (it was answered)."""
        return self.calls.pop(call_id, None) if self.calls else None

    def abandon(self, call: Call[Any]) -> None:
        """Its caller gave up: cancel it in the worker and watch ``cancel_grace`` (a
        nested call runs on the waiting call's thread, so one that will not stop holds
        that call too; the worker is killed, as for any started call)."""
        if call.answered or call.abandoned:
            return
        call.advance(CallEvent.ABANDON)
        call.task = None
        worker = self.worker
        if not worker.running:
            return
        worker.connection.send(Cancel(call.id))
        worker.recall._watch_grace(call)

    def fail_all(self, error: SnakepitError) -> None:
        """The worker is gone: each of these may have run, so each fails."""
        calls, self.calls = list(self.calls.values()), {}
        for call in calls:
            call.fail(error)
