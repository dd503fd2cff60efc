"""What a handler knows about the call it is running (worker side, standard library only)."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from snakepit.errors import CallCancelled


class ControlChannel(Protocol):
    """How a call learns of cancel and credit frames that arrive while it runs.

    The serial server reads them itself when asked (``poll``/``wait``); the threaded
    server's reader thread applies them as they come and ``wait`` sleeps on a condition.
    ``wait`` returns at once when ``ready()`` already holds: the frame a caller waits for
    may have been applied by its own last ``poll``, or by the reader just before the
    caller took the lock, and must not be waited for again.
    """

    def poll(self) -> None: ...

    def wait(self, timeout: float | None, ready: Callable[[], bool]) -> None: ...


class HostLink(Protocol):
    """The worker's end of host calls (:class:`snakepit.bridge.hostcalls.HostLink`)."""

    def call(self, ctx: CallContext, name: str, args: Any) -> Any: ...

    def emit(self, ctx: CallContext, event: str, measurements: Any, metadata: Any) -> None: ...


class SerialChannel:
    """Control frames for the serial server: read them from the wire when asked."""

    def __init__(self, pump: Callable[[float | None], None]) -> None:
        self._pump = pump

    def poll(self) -> None:
        self._pump(0.0)

    def wait(self, timeout: float | None, ready: Callable[[], bool]) -> None:
        if not ready():
            self._pump(timeout)


class ThreadedChannel:
    """Control frames for the threaded server: the reader thread applies them."""

    def __init__(self, changed: threading.Condition) -> None:
        self._changed = changed

    def poll(self) -> None:
        pass

    def wait(self, timeout: float | None, ready: Callable[[], bool]) -> None:
        with self._changed:  # checked under the lock the reader notifies with
            if not ready():
                self._changed.wait(timeout)


class CallContext:
    """Per-call context handed to commands that accept a second parameter.

    Attributes:
        id: the request id (unique per worker connection).
        command: the command name.
        args: the call's arguments.
        session_id: the session the call belongs to, or ``None``.
        deadline: Unix time after which the host no longer waits, or ``None``.
    """

    __slots__ = ("_cancelled", "_channel", "_credit", "_host", "_nested", "_refused", "_report",
                 "_sessions", "_started", "args", "batch", "command", "deadline", "id",
                 "session_id", "window")

    def __init__(self, id: int, command: str, args: Any, *, session_id: str | None,
                 deadline: float | None, window: int | None,
                 report: Callable[[dict[str, Any]], object], channel: ControlChannel,
                 sessions: dict[str, dict[str, Any]] | None = None,
                 host: HostLink | None = None) -> None:
        self.id = id
        self.command = command
        self.args = args
        self.session_id = session_id
        self.deadline = deadline
        self.window = window
        self.batch = 0
        """Items in a batch call (``pool.map``; ``args`` is their list), else 0."""
        self._report = report
        self._channel = channel
        self._sessions = sessions if sessions is not None else {}
        self._host = host
        self._nested: collections.deque[CallContext] = collections.deque()
        """Calls a host tool of this call made, waiting for this call's thread."""
        self._cancelled = False
        self._credit = window or 0
        # Set once, under the server's start lock: the call ran, or was answered as
        # never started (cancelled or expired while it waited) and never will run.
        self._started = False
        self._refused = False

    @property
    def session(self) -> dict[str, Any]:
        """State this worker keeps for the call's session, across calls.

        A plain dict, empty on the session's first call here. It is dropped when the
        session is deleted or expires, and it is lost if the worker dies (in strict
        mode the host tells the next caller with ``SessionWorkerLost``; in prefer mode
        the call runs on another worker, with empty state). Raises RuntimeError for a
        call without a session.
        """
        if self.session_id is None:
            raise RuntimeError(f"call {self.command!r} has no session; use execute_in_session")
        return self._sessions.setdefault(self.session_id, {})

    # -- deadline and cancellation -------------------------------------------------
    def time_left(self) -> float | None:
        """Seconds until the call's deadline (negative once passed), or ``None``."""
        if self.deadline is None:
            return None
        return self.deadline - time.time()

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.deadline is not None and time.time() >= self.deadline

    @property
    def cancelled(self) -> bool:
        """Whether the host asked to stop this call (cancel frame, or deadline passed).

        Cheap enough to check in a loop: it looks for pending control frames without
        blocking.
        """
        if not self._cancelled:
            self._channel.poll()
        return self._cancelled or self.expired

    def check_cancelled(self) -> None:
        """Raise :class:`CallCancelled` if the call should stop; call it in loops."""
        if self.cancelled:
            raise CallCancelled(f"call {self.id} ({self.command}) was cancelled")

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds (capped by the deadline) or until cancelled.

        Returns whether the call was cancelled. Use it instead of ``time.sleep`` in a
        handler that waits, so that a cancel wakes it at once.
        """
        end = None if timeout is None else time.monotonic() + timeout
        while not self.cancelled:
            left = self.time_left()
            if end is not None:
                remaining = end - time.monotonic()
                left = remaining if left is None else min(left, remaining)
            if left is not None and left <= 0:
                break
            self._channel.wait(left, self._is_cancelled)
        return self.cancelled

    def _is_cancelled(self) -> bool:
        return self._cancelled

    def _cancel(self) -> None:
        self._cancelled = True

    # -- progress ------------------------------------------------------------------
    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report progress to the host (``done`` of ``total`` units, optional message)."""
        frame: dict[str, Any] = {"t": "progress", "id": self.id, "done": float(done)}
        if total is not None:
            frame["total"] = float(total)
        if message is not None:
            frame["msg"] = str(message)
        self._report(frame)

    # -- the host ------------------------------------------------------------------
    def _link(self) -> HostLink:
        if self._host is None:
            raise RuntimeError("this call's context is not served by a bridge: no host")
        return self._host

    def call_host(self, name: str, args: Any = None) -> Any:
        """Run the host tool ``name`` with ``args`` and return its result.

        Blocks this call until the host answers. The tool runs in the host under this
        call's deadline; it may itself call the pool, and those calls may run here,
        nested, while this one waits. Tools are registered with
        ``pool.register_tool`` (every call) or ``pool.session(tools=...)`` (the
        session's calls).

        Raises:
            HostToolError: the tool raised (``host_type`` and ``host_message`` say what),
                or no tool ``name`` is reachable from this call (``UnknownTool``).
            CallCancelled: the call was cancelled, or its deadline passed, meanwhile
                (the host cancels the tool).
        """
        return self._link().call(self, name, args)

    def host_tools(self) -> list[dict[str, Any]]:
        """The host tools this call can reach: ``[{"name": ..., "description": ...}]``
        (the session's and the pool's, a session tool shadowing a pool tool)."""
        tools: list[dict[str, Any]] = self._link().call(self, "snakepit.tools", None)
        return tools

    def emit(self, event: str, measurements: dict[str, float] | None = None,
             metadata: dict[str, Any] | None = None) -> None:
        """Emit the host telemetry event ``worker.<event>``, with the pool, worker and
        call added to ``metadata``. Nothing is waited for.

        Raises:
            ValueError: a bad name, a non-number measurement, a non-scalar metadata
                value, or more than the bounds of ``snakepit.protocol.events`` allow.
        """
        self._link().emit(self, event, measurements, metadata)

    # -- stream credit -------------------------------------------------------------
    def _grant(self, n: int) -> None:
        self._credit += n

    def _take_credit(self) -> bool:
        """Wait for one unit of stream credit; False if cancelled (or expired) meanwhile."""
        while True:
            if self.cancelled:  # polls the wire: credit may arrive here too
                return False
            if self._credit > 0:
                self._credit -= 1
                return True
            left = self.time_left()
            self._channel.wait(None if left is None else max(left, 0.0), self._has_credit)

    def _has_credit(self) -> bool:
        return self._credit > 0 or self._cancelled
