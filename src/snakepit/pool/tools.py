"""Host tools: functions of the application that a worker's handler calls back.

A tool is an async function of one argument (the decoded ``args``), registered for the
whole pool (``pool.register_tool``) or for one session (``pool.session(tools=...)``,
shadowing a pool tool of the same name while the session lives). A handler calls it
with ``ctx.call_host(name, args)``; the worker's reader hands the ``host_call`` frame to
:meth:`ToolBox.host_call`, which starts the tool in the pool's nursery:

- under the calling call's deadline (the tighter of its own and its caller's scopes),
  and under the pool's :class:`trio.CapacityLimiter` (``host_tool_limit``), so a flood
  of host calls cannot starve the host;
- cancelled when the calling call ends: answered, abandoned by its caller (timeout or
  cancellation), or lost with its worker. The worker stops waiting on its own (it reads
  the cancel, or sees the deadline), so no answer is sent for a cancelled tool.

The tool runs with :data:`CURRENT` naming the worker and the call that waits for it. A
call the tool makes to the pool (``execute``, ``stream``) sees it and is sent straight
to that worker, flagged as nested in the waiting call: the waiting call lends its
capacity, and the worker runs it on the waiting call's thread (see
:mod:`snakepit.worker.nested`). So a pool whose every worker waits in a host tool --
a pool of one, say -- still serves its tools' calls, like a call stack.
"""

from __future__ import annotations

import contextvars
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import trio

from snakepit import telemetry
from snakepit.bridge.hostcalls import HOST_TOOL_KEY
from snakepit.errors import PayloadError
from snakepit.protocol import wire
from snakepit.protocol.events import MAX_EVENTS_PER_SECOND, RateLimit, check_event
from snakepit.protocol.messages import Emit, HostCall, HostError, HostResult
from snakepit.worker.lifecycle import Call, CallState

if TYPE_CHECKING:
    from snakepit.worker.worker import Worker

log = logging.getLogger("snakepit.tools")

ToolFunction = Callable[[Any], Awaitable[Any]]
"""A host tool: ``async def tool(args) -> result``."""


class _Session(Protocol):
    id: str


Handle = TypeVar("Handle", bound=_Session)


@attrs.frozen
class HostTool:
    """A registered host tool."""

    name: str
    """What handlers call it by (``ctx.call_host(name, args)``)."""
    fn: ToolFunction
    """The async function run for each host call."""
    description: str = ""
    """Listed by ``ctx.host_tools()`` (default: the function's docstring)."""


RUNNING = frozenset({CallState.STARTED, CallState.SENT, CallState.WITHDRAWING})
"""States of a call that may wait for a host tool: a host call proves it started, even
when the host had not seen it reach the front yet or had asked for it back (the worker
decides: it answers the withdraw with nothing once the call runs). An abandoned call
is not waited for: the worker reads its cancel."""


@attrs.frozen
class ToolRun:
    """A host tool running for ``call`` on ``worker`` (what :data:`CURRENT` holds)."""

    worker: Worker
    call: Call[Any]
    scope: trio.CancelScope

    @property
    def lends(self) -> bool:
        """Whether calls made now may run nested on ``worker``: the call still waits
        for this tool there, and the worker still runs."""
        return (self.call.state in RUNNING and self.worker.running
                and not self.scope.cancel_called)


CURRENT: contextvars.ContextVar[ToolRun | None] = contextvars.ContextVar(
    "snakepit_host_tool", default=None)
"""The host tool this task runs in (and the call that waits for it), if any."""


def lender() -> ToolRun | None:
    """The tool run whose waiting call lends its capacity to a call made now, if any."""
    run = CURRENT.get()
    return run if run is not None and run.lends else None


def host_tool(name: str) -> dict[str, str]:
    """An argument of ``pool.call`` (the enhanced bridge) that the worker receives as a
    callable running host tool ``name`` -- to pass a host function where a worker's
    library expects one (a DSPy tool, a callback)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a host tool's name must be a non-empty string, got {name!r:.80}")
    return {HOST_TOOL_KEY: name}


def make_tool(name: Any, fn: Any, description: str | None) -> HostTool:
    """Check and build a :class:`HostTool`.

    Raises:
        TypeError: ``name`` is not a non-empty string, or is reserved; ``fn`` is not
            callable.
    """
    if not isinstance(name, str) or not name or name == wire.LIST_TOOLS:
        raise TypeError(f"a host tool's name must be a non-empty string other than "
                        f"{wire.LIST_TOOLS!r}, got {name!r:.80}")
    if not callable(fn):
        raise TypeError(f"host tool {name!r} must be an async function, got {fn!r:.80}")
    if description is None:
        description = (getattr(fn, "__doc__", None) or "").strip().split("\n\n")[0]
    return HostTool(name, fn, " ".join(description.split()))


class ToolBox:
    """A pool's host tools, the tools running now, and the events workers emit."""

    def __init__(self, pool_name: str, nursery: trio.Nursery, limit: int) -> None:
        self.pool_name = pool_name
        self._nursery = nursery
        self.limiter = trio.CapacityLimiter(limit)
        """Bounds the host tools running at once (``PoolConfig.host_tool_limit``)."""
        self.tools: dict[str, HostTool] = {}
        """The pool-wide tools, by name."""
        self.session_tools: dict[str, dict[str, HostTool]] = {}
        """Each live session's own tools, by session id."""
        self.runs: dict[Call[Any], set[trio.CancelScope]] = {}
        """The tools running now, by the call that waits for them."""
        self._rates: dict[str, RateLimit] = {}
        self.events_dropped = 0
        """``emit`` frames dropped: malformed, or over a worker's rate."""

    # -- registry --------------------------------------------------------------------
    def register(self, name: str, fn: ToolFunction, description: str | None = None) -> None:
        """Make ``fn`` reachable from every call as tool ``name`` (replacing one)."""
        self.tools[name] = make_tool(name, fn, description)

    def open_session(self, session_id: str, tools: dict[str, ToolFunction]) -> None:
        """Give session ``session_id`` its own tools."""
        built = {name: make_tool(name, fn, None) for name, fn in tools.items()}
        self.session_tools[session_id] = built

    def close_session(self, session_id: str) -> None:
        """Session ``session_id`` ended: its tools go with it."""
        self.session_tools.pop(session_id, None)

    @asynccontextmanager
    async def with_tools(self, session: AbstractAsyncContextManager[Handle],
                         tools: dict[str, ToolFunction]) -> AsyncIterator[Handle]:
        """``session`` (``pool.session()``'s block), with ``tools`` for its calls."""
        async with session as handle:
            self.open_session(handle.id, tools)
            try:
                yield handle
            finally:
                self.close_session(handle.id)

    def reachable(self, session_id: str | None) -> dict[str, HostTool]:
        """The tools a call of ``session_id`` reaches (session tools shadow pool ones)."""
        own = self.session_tools.get(session_id, {}) if session_id is not None else {}
        return {**self.tools, **own} if own else self.tools

    # -- host calls --------------------------------------------------------------------
    def host_call(self, worker: Worker, message: HostCall) -> None:
        """A ``host_call`` frame from ``worker``: start the tool (see the module)."""
        call = worker.inflight.get(message.call) or worker.nested.get(message.call)
        if call is None or call.state not in RUNNING:
            return  # its call has ended or was abandoned: the worker waits no more
        if message.name == wire.LIST_TOOLS:
            listing = [{"name": tool.name, "description": tool.description}
                       for tool in self.reachable(call.session_id).values()]
            _answer(worker, HostResult(message.id, listing))
            return
        tool = self.reachable(call.session_id).get(message.name)
        if tool is None:
            known = sorted(self.reachable(call.session_id))
            _answer(worker, HostError(message.id, "UnknownTool", f"no host tool "
                                      f"{message.name!r} is reachable from this call "
                                      f"(known: {known})"))
            return
        deadline = math.inf
        if call.wall_deadline is not None:
            deadline = trio.current_time() + (call.wall_deadline - time.time())
        scope = trio.CancelScope(deadline=deadline)
        self.runs.setdefault(call, set()).add(scope)
        self._nursery.start_soon(self._run, ToolRun(worker, call, scope), tool,
                                 message.id, message.args, name=f"host tool {tool.name}")

    async def _run(self, run: ToolRun, tool: HostTool, host_id: int, args: Any) -> None:
        CURRENT.set(run)
        answer: HostResult | HostError | None = None
        try:
            with run.scope:
                async with self.limiter:
                    answer = HostResult(host_id, await tool.fn(args))
        except Exception as exc:  # the tool's failure is the handler's to handle
            answer = HostError(host_id, _type_name(exc), str(exc))
        finally:
            scopes = self.runs.get(run.call)
            if scopes is not None:
                scopes.discard(run.scope)
                if not scopes:
                    del self.runs[run.call]
        if answer is None:  # cut short: the call ended, or its deadline passed (which
            return  # the worker sees too): it waits no more
        if run.call.state in RUNNING and run.worker.running:
            _answer(run.worker, answer)

    def call_ended(self, call: Call[Any]) -> None:
        """``call`` was answered, abandoned or lost: cancel the tools it waits for."""
        for scope in self.runs.pop(call, ()):
            scope.cancel()

    # -- telemetry from workers -----------------------------------------------------
    def emitted(self, worker: Worker, message: Emit) -> None:
        """An ``emit`` frame: the telemetry event ``worker.<event>``, if it is within
        the bounds of :mod:`snakepit.protocol.events` and the worker's rate."""
        problem = check_event(message.event, message.measurements, message.metadata)
        if problem is not None:
            self.events_dropped += 1
            log.warning("dropped an event from worker %s: %s", worker.id, problem)
            return
        now = trio.current_time()
        rate = self._rates.get(worker.id)
        if rate is None:
            rate = self._rates[worker.id] = RateLimit(MAX_EVENTS_PER_SECOND, now)
        if not rate.take(now):
            self.events_dropped += 1
            return
        event = f"worker.{message.event}"
        if not telemetry.enabled(event):
            return
        call = worker.inflight.get(message.call) or worker.nested.get(message.call)
        telemetry.emit(event, dict(message.measurements or {}),
                       {**(message.metadata or {}), "pool": self.pool_name,
                        "worker": worker.id, "call": message.call,
                        "command": call.command if call is not None else None})


def _answer(worker: Worker, answer: HostResult | HostError) -> None:
    try:
        worker.connection.send(answer)
    except PayloadError as exc:  # the tool's result cannot travel: say so instead
        worker.connection.send(HostError(answer.id, "PayloadError", str(exc)))


def _type_name(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
