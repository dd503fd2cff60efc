"""Calls from a handler to the host: ``ctx.call_host`` and ``ctx.emit`` (worker side,
standard library only).

A handler that calls a host tool blocks its thread until the host answers, but the
wire keeps being read meanwhile (the serial server's waiting thread reads it itself;
in threaded mode the reader thread does and wakes it). Three things can end or break
the wait:

- the host's ``host_result`` / ``host_error`` for this host call: return or raise;
- a ``cancel`` of the call, or its deadline passing: raise ``CallCancelled`` (the host
  cancels the tool on its side);
- a ``call`` frame carrying ``nest: <this call>``: the tool itself called the pool, and
  the host sent that call here, to the worker whose capacity the waiting call holds.
  The waiting thread runs it at once, answers it, and waits again -- a call stack
  across two processes, so a pool of one worker cannot deadlock on its own tools.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from snakepit.errors import CallCancelled, HostToolError, ProtocolError
from snakepit.protocol import wire
from snakepit.protocol.events import check_event

if TYPE_CHECKING:
    from snakepit.bridge.context import CallContext, ControlChannel

_local = threading.local()


def current_context() -> CallContext | None:
    """The context of the call this thread is running, or ``None`` outside a call.

    Lets code deep inside a handler (a DSPy tool proxy, say) reach the host without
    the context being passed down.
    """
    stack: list[CallContext] | None = getattr(_local, "stack", None)
    return stack[-1] if stack else None


def enter(ctx: CallContext) -> None:
    """``ctx`` runs on this thread from now (nested calls stack up)."""
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(ctx)


def leave() -> None:
    """The innermost call of this thread has ended."""
    _local.stack.pop()


class _Waiting:
    """One host call waiting for its answer."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: tuple[str, str] | None = None


class HostLink:
    """The worker's end of host calls: numbering, waiting, and the answers."""

    def __init__(self, send: Callable[[dict[str, Any]], object], channel: ControlChannel,
                 run_nested: Callable[[CallContext], None]) -> None:
        self._send = send
        self._channel = channel
        self._run_nested = run_nested
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, _Waiting] = {}

    # -- the reader's side ---------------------------------------------------------
    def answer(self, message: dict[str, Any]) -> None:
        """A ``host_result`` or ``host_error`` frame (an id nobody waits for any more
        is dropped: its call was cancelled meanwhile)."""
        host_id = message.get("id")
        if type(host_id) is not int:
            raise ProtocolError(f"malformed {message.get(wire.TAG)!r} frame: {message!r:.200}")
        waiting = self._waiting.get(host_id)
        if waiting is None:
            return
        if message.get(wire.TAG) == wire.HOST_ERROR:
            waiting.error = (str(message.get("etype") or "Exception"), str(message.get("msg", "")))
        else:
            waiting.value = message.get("value")
        waiting.done = True

    # -- the handler's side --------------------------------------------------------
    def call(self, ctx: CallContext, name: str, args: Any) -> Any:
        """Run host tool ``name`` for call ``ctx`` and return its result (see the module).

        Raises:
            HostToolError: the tool raised in the host (or there is no such tool).
            CallCancelled: the call was cancelled or its deadline passed meanwhile.
            TypeError: ``name`` is not a string.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"a host tool's name must be a non-empty string, got {name!r:.80}")
        with self._lock:
            host_id = next(self._ids)
        waiting = self._waiting[host_id] = _Waiting()
        nested = ctx._nested

        def ready() -> bool:
            return waiting.done or bool(nested) or ctx._cancelled

        try:
            self._check(ctx, name)
            self._send({wire.TAG: wire.HOST_CALL, "id": host_id, "call": ctx.id, "name": name,
                        "args": args})
            while True:
                while nested:  # made by the tool: runs here, on this call's capacity
                    self._run_nested(nested.popleft())
                if waiting.done:
                    break
                self._check(ctx, name)
                self._channel.wait(ctx.time_left(), ready)
        finally:
            self._waiting.pop(host_id, None)
        if waiting.error is not None:
            raise HostToolError(*waiting.error)
        return waiting.value

    @staticmethod
    def _check(ctx: CallContext, name: str) -> None:
        if ctx._cancelled:
            raise CallCancelled(f"call {ctx.id} ({ctx.command}) was cancelled while it "
                                f"waited for host tool {name!r}")
        if ctx.expired:
            raise CallCancelled(f"call {ctx.id} ({ctx.command}) passed its deadline while "
                                f"it waited for host tool {name!r}")

    def emit(self, ctx: CallContext, event: str, measurements: Any, metadata: Any) -> None:
        """Send a telemetry event for call ``ctx`` (see ``CallContext.emit``).

        Raises:
            ValueError: the event breaks :mod:`snakepit.protocol.events`' bounds.
        """
        problem = check_event(event, measurements, metadata)
        if problem is not None:
            raise ValueError(problem)
        self._send({wire.TAG: wire.EMIT, "call": ctx.id, "event": event,
                    "measurements": measurements or {}, "metadata": metadata or {}})



HOST_TOOL_KEY = "$host_tool"
"""``{"$host_tool": name}`` in the enhanced bridge's arguments becomes a
:class:`HostToolProxy` (the host writes it with ``snakepit.host_tool(name)``)."""


class HostToolProxy:
    """A callable that runs host tool ``name`` for the call running on this thread.

    Pass it wherever a function is expected (a DSPy tool, a callback). Called with
    keyword arguments only, the tool receives them as a dict; with one positional
    argument, that argument; with none, ``None``; with several, the list of them.

    Raises (when called):
        RuntimeError: outside a call (no host to ask).
        HostToolError, CallCancelled: as ``ctx.call_host``.
    """

    def __init__(self, name: str, description: str = "") -> None:
        self.name = self.__name__ = name
        self.__doc__ = description or f"Host tool {name!r}."

    def __repr__(self) -> str:
        return f"<host tool {self.name!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ctx = current_context()
        if ctx is None:
            raise RuntimeError(f"host tool {self.name!r} called outside a snakepit call")
        if args and kwargs:
            raise TypeError(f"host tool {self.name!r} takes positional or keyword "
                            "arguments, not both")
        value: Any = kwargs if kwargs else (args[0] if len(args) == 1 else
                                            list(args) if args else None)
        return ctx.call_host(self.name, value)
