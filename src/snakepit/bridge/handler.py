"""Command handlers: the worker author's API (worker side, standard library only)."""

from __future__ import annotations

import inspect
import operator
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar, overload

from snakepit.bridge.context import CallContext

__all__ = ["CommandHandler", "RetryableError", "command"]

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__snakepit_command__"


class RetryableError(Exception):
    """Raise it from a command for a transient failure (a busy database, a rate
    limit): the host's :class:`~snakepit.RemoteError` is marked ``retryable``, so a
    pool with a ``retry`` policy sends the call again. Any exception with a true
    ``retryable`` attribute does the same."""

    retryable = True


RetryableError.__module__ = "snakepit.bridge"  # its public name, in remote type names


@overload
def command(name: F) -> F: ...


@overload
def command(name: str | None = None) -> Callable[[F], F]: ...


def command(name: str | F | None = None) -> Any:
    """Mark a handler method as a command.

    Use bare (``@command``: the method's name is the command) or with a name
    (``@command("add-numbers")``). The method takes ``(self)``, ``(self, args)`` or
    ``(self, args, ctx)``; ``ctx`` is the :class:`CallContext`. A generator method is a
    streaming command: each yielded item is one chunk.
    """
    if callable(name):
        setattr(name, _MARK, name.__name__)
        return name

    def mark(fn: F) -> F:
        setattr(fn, _MARK, name or fn.__name__)
        return fn

    return mark


class Command:
    """A registered command: the callable and how to call it."""

    __slots__ = ("arity", "fn", "name", "streaming")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        self.arity = min(len(params), 2)
        self.streaming = inspect.isgeneratorfunction(fn)

    def __call__(self, args: Any, ctx: CallContext) -> Any:
        if self.arity == 2:
            return self.fn(args, ctx)
        if self.arity == 1:
            return self.fn(args)
        return self.fn()


_COMPUTE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
}


class CommandHandler:
    """Base class of worker handlers; serves the built-in commands.

    Subclass it and mark methods with :func:`command`, or call :meth:`register`.
    ``concurrency`` is how many calls the worker runs at once (threads); the host learns
    it from the handshake and never sends more.

    Built-ins: ``ping``, ``echo``, ``info`` and ``compute``.
    """

    concurrency: int = 1

    def __init__(self) -> None:
        self.started_at = time.monotonic()
        self.calls_served = 0
        self.session_state: dict[str, dict[str, Any]] = {}
        """Per-session state (``ctx.session``), by session id."""
        self.bridge: Any = None
        """The :class:`~snakepit.bridge.BridgeServer` serving this handler, once serving."""
        self._commands: dict[str, Command] = {}
        for klass in reversed(type(self).__mro__):
            for attr in vars(klass).values():
                name = getattr(attr, _MARK, None)
                if isinstance(name, str):
                    self.register(name, getattr(self, attr.__name__))

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Serve ``fn`` as command ``name`` (replaces an earlier one of that name)."""
        self._commands[name] = Command(name, fn)

    def end_session(self, session_id: str) -> None:
        """The host ended session ``session_id``: drop its state.

        Override to release resources the state holds (call ``super()`` to drop it).
        """
        self.session_state.pop(session_id, None)

    def lookup(self, name: str) -> Command | None:
        """The command called ``name``, or ``None``."""
        return self._commands.get(name)

    def command_names(self) -> list[str]:
        """Names of every command this handler serves, sorted."""
        return sorted(self._commands)

    # -- built-in commands ---------------------------------------------------------
    @command
    def ping(self) -> dict[str, Any]:
        """Liveness check: answers with the worker's pid."""
        return {"pong": True, "pid": os.getpid()}

    @command
    def echo(self, args: Any) -> Any:
        """Return the arguments unchanged."""
        return args

    @command
    def info(self) -> dict[str, Any]:
        """Who and what this worker is."""
        return {
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "handler": f"{type(self).__module__}:{type(self).__qualname__}",
            "uptime": time.monotonic() - self.started_at,
            "calls_served": self.calls_served,
            "concurrency": self.concurrency,
            "commands": self.command_names(),
            "sessions": sorted(self.session_state),
        }

    @command
    def compute(self, args: dict[str, Any]) -> Any:
        """Small arithmetic: ``{"op": "add", "a": 1, "b": 2}``; ``{"op": "sum", "values": []}``."""
        op = args.get("op")
        if op == "sum":
            return sum(args["values"])
        fn = _COMPUTE_OPS.get(op)  # type: ignore[arg-type]
        if fn is None:
            raise ValueError(f"unknown op {op!r}; expected sum or one of {sorted(_COMPUTE_OPS)}")
        return fn(args["a"], args["b"])
