"""The error hierarchy: every failure the public API raises is a :class:`SnakepitError`.

Each class says when it is raised, what it means and what the caller should do.
``retryable`` is a class attribute: ``True`` means the same call may be sent again
without risk of running it twice with a different outcome (the work never reached a
worker, or the worker reported it did not complete it).
"""

from __future__ import annotations

__all__ = [
    "CallCancelled",
    "CircuitOpen",
    "ConfigError",
    "HostToolError",
    "PayloadError",
    "PlacementDeferred",
    "PoolBroken",
    "PoolClosed",
    "PoolDraining",
    "PoolSaturated",
    "ProtocolError",
    "QueueTimeout",
    "RefLost",
    "RemoteError",
    "RouteNotFound",
    "SessionNotFound",
    "SessionWorkerLost",
    "SnakepitError",
    "StreamIdleTimeout",
    "UnknownCommand",
    "WorkerCrashed",
    "WorkerCrashedBeforeStart",
    "WorkerStartupError",
    "WorkerTimeout",
]

import signal
from collections.abc import Sequence


class SnakepitError(Exception):
    """Base class of every error snakepit raises."""

    #: Whether the failed call may safely be submitted again.
    retryable: bool = False


class ConfigError(SnakepitError, ValueError):
    """A configuration value or an argument is invalid.

    Raised when a :class:`~snakepit.PoolConfig` or :class:`~snakepit.SnakepitConfig` is
    built or loaded, and for invalid arguments such as a ``timeout`` <= 0 or a session
    ``ttl``. ``errors`` lists every problem as ``"path.to.field: what is wrong"``, all
    at once. Fix the value; retrying cannot help.
    """

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: tuple[str, ...] = tuple(errors)
        super().__init__("invalid configuration: " + "; ".join(self.errors))


class PoolClosed(SnakepitError):
    """The pool is shutting down or has shut down; the call was not run.

    Raised for calls submitted after the pool's ``async with`` block started to exit,
    and for calls still waiting or running when it did.
    """


class PoolDraining(SnakepitError):
    """An operator drained the pool (``snakepit drain``, ``Pool.drain``); the call was
    not run.

    Calls already waiting or running finish; new ones are refused until the pool is
    resumed. Send the call to another pool, or retry later.
    """

    retryable = True


class PoolSaturated(SnakepitError):
    """The wait queue is full (``max_queue`` calls already wait); the call was not run.

    ``retry_after`` estimates, in seconds, when a slot may be free. Back off and retry,
    or shed the load.
    """

    retryable = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PoolBroken(SnakepitError):
    """Every worker slot has failed past its restart intensity; nothing can run now.

    With ``restart.cooldown`` set (the default), each failed slot tries again after its
    cool-down, and ``retry_after`` says in how many seconds the first one does: answer
    503 with that ``Retry-After``, or wait and retry. With ``cooldown = None`` the pool
    stays broken (``retry_after`` is ``None``): report and exit. The workers' stderr and
    the crash lines of the ``snakepit.supervisor`` logger say why they died.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueTimeout(SnakepitError):
    """The call's deadline passed while it waited for a worker; it never ran.

    It waited in the pool's queue, or (with ``pipeline_depth`` > 1) in a busy worker's
    pipe behind running calls -- the worker refuses such a call, and the calls running
    there are not disturbed. Retry with a longer timeout, or add workers.
    """

    retryable = True


class WorkerTimeout(SnakepitError):
    """The call's deadline passed while a worker ran it.

    The worker was asked to cancel the call; if it did not stop within
    ``cancel_grace`` it was killed and replaced. Whether any side effect of the call
    happened is unknown, so the call is not marked retryable.
    """


class StreamIdleTimeout(SnakepitError):
    """A stream's consumer took no chunk for ``stream_idle_timeout`` seconds, so the
    stream was cancelled.

    Raised at the consumer's next read of the stream (``async for`` over it). A consumer
    that stops reading (a web client that stopped reading its response, say) would
    otherwise hold its worker until the stream's deadline: credit flow control pauses
    the generator, and the worker's capacity stays taken. Past the idle limit the
    generator was closed in the worker (its ``finally`` blocks ran), the worker's
    capacity was freed for other calls, and the chunks the consumer had not taken were
    dropped. Time the consumer spends waiting inside a read does not count: a slow
    producer is never cut.

    The stream ran and may have had effects, so it is not retryable. Read the stream
    without long pauses, raise ``PoolConfig.stream_idle_timeout``, or set it to
    ``None`` where a consumer may legitimately pause for long.
    """


class CallCancelled(SnakepitError):
    """The worker stopped the call because the host cancelled it."""


class WorkerCrashed(SnakepitError):
    """The worker process died while the call was in flight.

    ``exit_code`` is the process's exit status, or ``None``; ``signal`` is the number
    of the signal that killed it, or ``None``. The call may or may not have had
    effects, so it is not retryable unless the caller knows it is idempotent.
    """

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        self.exit_code = exit_code
        self.signal: int | None = -exit_code if exit_code is not None and exit_code < 0 else None
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            message = f"{message} (killed by {name})"
        elif exit_code is not None:
            message = f"{message} (exit code {exit_code})"
        super().__init__(message)


class WorkerCrashedBeforeStart(WorkerCrashed):
    """The worker died while the call waited in its pipe; the call never started.

    With ``pipeline_depth`` > 1 a call may be sent to a busy worker, to run once the
    call ahead of it is done. If the worker dies first (the call ahead crashed it, or
    it was killed), the waiting call did not run, so unlike its base class this error
    is retryable: a ``retry`` policy retries it, and so may the caller. It is still a
    :class:`WorkerCrashed`, so ``except WorkerCrashed`` sees it too.
    """

    retryable = True


class WorkerStartupError(SnakepitError):
    """A worker process could not be started or did not complete its handshake.

    ``stderr_tail`` holds the last lines the process wrote to stderr, which usually
    name the cause (a bad executable, an import error in the handler).
    """

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        self.stderr_tail = stderr_tail
        if stderr_tail:
            message = f"{message}\n--- worker stderr (tail) ---\n{stderr_tail}"
        super().__init__(message)


class RemoteError(SnakepitError):
    """The handler raised an exception; the worker is still in service.

    ``remote_type`` is the exception's qualified type name in the worker,
    ``remote_message`` its message and ``remote_traceback`` the formatted traceback.
    ``retryable`` is true when the handler marked the error transient (it raised
    :class:`snakepit.bridge.RetryableError`, or any exception whose ``retryable``
    attribute is true): a retry policy may then send the call again.
    """

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str = "",
        *,
        retryable: bool = False,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        if retryable:
            self.retryable = True  # this error, not every RemoteError
        super().__init__(f"{remote_type}: {remote_message}")


class UnknownCommand(RemoteError):
    """The worker's handler has no command of that name; nothing was run."""

    retryable = False


class PayloadError(SnakepitError, ValueError):
    """A value could not be encoded for the wire, or its frame exceeds ``max_frame_size``.

    Raised before anything is sent when the host's own arguments are at fault; when the
    worker's result is at fault the worker reports it and stays in service.
    """


class ProtocolError(SnakepitError):
    """A peer broke the wire protocol (malformed, oversized or unexpected frame).

    The host never hangs or crashes on bad input: the offending worker is replaced and
    the calls in flight on it fail with this error.
    """


class SessionNotFound(SnakepitError):
    """No live session has that id: it never existed, was deleted, or expired.

    Create a new session; the old one's worker-side state is gone.
    """


class SessionWorkerLost(SnakepitError):
    """A strict-affinity session's worker died, and with it the session's state.

    The call was not run. The session stays usable: its next call binds to another
    worker with empty state, so rebuild the state (or use ``mode="prefer"`` where
    running without it is acceptable).
    """


class RouteNotFound(SnakepitError):
    """No pool of an ``open_pools`` group serves this command (no route, no default)."""


class CircuitOpen(SnakepitError):
    """The pool's (or the command's) circuit breaker is open; the call was not run.

    Workers failed repeatedly; calls fail fast until ``retry_after`` seconds have
    passed, when one probe call may go through. Retry after that, or degrade.
    """

    retryable = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RefLost(SnakepitError):
    """A :class:`~snakepit.Ref`'s object is gone: the worker that held it died (or was
    recycled), or the object was released (``ref.release()``) or deleted.

    The call was not run (in a pipeline: from the step that used the object on).
    Recreate the object.
    """


class PlacementDeferred(WorkerStartupError):
    """A pool kind has nowhere to place a worker right now (every GPU is tainted).

    Raised by a pool kind's ``worker_env``; the slot waits ``retry_after`` seconds and
    tries again, without counting it as a failure of the slot.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HostToolError(SnakepitError):
    """Raised in a worker by ``ctx.call_host`` when the host tool failed.

    ``host_type`` is the qualified type name of what the tool raised in the host
    (``UnknownTool`` when no tool of that name is reachable from the call),
    ``host_message`` its message. The handler may catch it; otherwise the call fails
    with a :class:`RemoteError` of type ``snakepit.errors.HostToolError``.
    """

    def __init__(self, host_type: str, host_message: str) -> None:
        self.host_type = host_type
        self.host_message = host_message
        super().__init__(f"{host_type}: {host_message}")
