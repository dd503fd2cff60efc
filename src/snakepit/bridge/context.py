"""What a handler knows about the call it is running (worker side, standard library only)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from snakepit.errors import CallCancelled


class ControlChannel(Protocol):
    """How a call learns of cancel and credit frames that arrive while it runs.

    The serial server reads them itself when asked (``poll``/``wait``); the threaded
    server's reader thread applies them as they come and ``wait`` sleeps on a condition.
    ``wait`` returns early once ``done()`` holds: the caller's check and the wait must
    not let a frame that lands in between go unnoticed until the timeout.
    """

    def poll(self) -> None: ...

    def wait(self, timeout: float | None, done: Callable[[], bool]) -> None: ...


class SerialChannel:
    """Control frames for the serial server: read them from the wire when asked."""

    def __init__(self, pump: Callable[[float | None], None]) -> None:
        self._pump = pump

    def poll(self) -> None:
        self._pump(0.0)

    def wait(self, timeout: float | None, done: Callable[[], bool]) -> None:
        if not done():  # frames an earlier poll applied may have done it already
            self._pump(timeout)


class ThreadedChannel:
    """Control frames for the threaded server: the reader thread applies them."""

    def __init__(self, changed: threading.Condition) -> None:
        self._changed = changed

    def poll(self) -> None:
        pass

    def wait(self, timeout: float | None, done: Callable[[], bool]) -> None:
        with self._changed:  # the reader notifies under this lock after applying a frame
            self._changed.wait_for(done, timeout)


class CallContext:
    """Per-call context handed to commands that accept a second parameter.

    Attributes:
        id: the request id (unique per worker connection).
        command: the command name.
        args: the call's arguments.
        session_id: the session the call belongs to, or ``None``.
        deadline: Unix time after which the host no longer waits, or ``None``.
    """

    __slots__ = ("_cancelled", "_channel", "_credit", "_report", "_sessions", "args", "command",
                 "deadline", "id", "session_id", "window")

    def __init__(self, id: int, command: str, args: Any, *, session_id: str | None,
                 deadline: float | None, window: int | None,
                 report: Callable[[dict[str, Any]], object], channel: ControlChannel,
                 sessions: dict[str, dict[str, Any]] | None = None) -> None:
        self.id = id
        self.command = command
        self.args = args
        self.session_id = session_id
        self.deadline = deadline
        self.window = window
        self._report = report
        self._channel = channel
        self._sessions = sessions if sessions is not None else {}
        self._cancelled = False
        self._credit = window or 0

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
            self._channel.wait(left, lambda: self._cancelled)
        return self.cancelled

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

    # -- stream credit -------------------------------------------------------------
    def _grant(self, n: int) -> None:
        self._credit += n

    def _take_credit(self) -> bool:
        """Wait for one unit of stream credit; False if cancelled (or expired) meanwhile."""
        while self._credit <= 0:
            if self.cancelled:
                return False
            if self._credit > 0:
                break  # the poll inside ``cancelled`` brought credit: do not wait
            left = self.time_left()
            self._channel.wait(None if left is None else max(left, 0.0),
                               lambda: self._credit > 0 or self._cancelled)
        if self.cancelled:
            return False
        self._credit -= 1
        return True
