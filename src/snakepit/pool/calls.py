"""The path of one call: a deadline, a worker, attempts with retries, and back.

Mixed into :class:`~snakepit.Pool`; the hot path is written inline (no context
managers, no telemetry payloads unless someone listens) because every microsecond here
is paid per call (DESIGN.md: ~10 µs per Trio task switch on the reference box).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from snakepit import telemetry
from snakepit.errors import (
    ConfigError,
    PoolClosed,
    PoolDraining,
    QueueTimeout,
    SnakepitError,
    WorkerTimeout,
)
from snakepit.pool.dispatch import QueuedCall
from snakepit.pool.dynamic import acquire_pinned
from snakepit.resilience.retry import is_retryable, retry_delay
from snakepit.worker.calls import ProgressCallback

_call_ids = itertools.count(1)
"""Process-wide call ids, carried as ``call`` in the metadata of ``call.*`` events so a
listener can pair a call's start with its end (a tracing span, say)."""

if TYPE_CHECKING:
    from snakepit.config import PoolConfig
    from snakepit.pool.dispatch import Dispatcher
    from snakepit.pool.session import SessionAffinity
    from snakepit.pool.stats import CallCounters
    from snakepit.resilience.breaker import CircuitBreaker
    from snakepit.sessions.store import SessionStore
    from snakepit.worker.worker import Worker


class CallPath:
    """Acquiring a worker within a deadline, and running a call's attempts."""

    config: PoolConfig
    sessions: SessionStore
    _closed: bool
    draining: bool
    _dispatcher: Dispatcher
    _counters: CallCounters
    _breaker: CircuitBreaker | None
    _affinity: SessionAffinity

    _emit: Callable[..., None]

    def _deadline(self, timeout: float | None) -> float:
        if timeout is None:
            timeout = self.config.call_timeout
        if timeout is None:
            return math.inf
        if not timeout > 0:
            raise ConfigError([f"timeout: must be a number > 0 (got {timeout!r})"])
        return trio.current_time() + timeout

    def _check_open(self) -> None:
        """Raise PoolClosed or PoolDraining when the pool takes no new calls."""
        if self._closed:
            raise PoolClosed("the pool is closed")
        if self.draining:
            raise PoolDraining(f"pool {self.config.name!r} is drained by its operator")

    async def _acquire(self, deadline: float, worker: Worker | None = None) -> Worker:
        """A unit of any worker (or of ``worker`` only), waiting until ``deadline``."""
        self._check_open()
        dispatcher = self._dispatcher
        if worker is None:
            found = dispatcher.try_acquire()
            if found is not None:
                return found
        if math.isinf(deadline):
            return await (dispatcher.acquire() if worker is None
                          else dispatcher.acquire_worker(worker))
        with trio.CancelScope(deadline=deadline):
            found = await (dispatcher.acquire() if worker is None
                           else dispatcher.acquire_worker(worker))
            if trio.current_time() < deadline:
                return found
            dispatcher.release(found)  # handed over just as the deadline passed
        raise QueueTimeout("the call's deadline passed while it waited for a worker")

    # -- calls -------------------------------------------------------------------------
    def _call_started(self, command: str, **metadata: Any) -> tuple[int, float]:
        """Count a submitted call and announce it; returns its id and submission time."""
        self._counters.calls += 1
        call_id = next(_call_ids)
        if telemetry.enabled("call.start"):  # build no payload nobody reads
            self._emit("call.start", {"queue_depth": self._dispatcher.queue_depth},
                       command=command, call=call_id, **metadata)
        return call_id, trio.current_time()

    def _call_failed(self, exc: BaseException, command: str, call_id: int, submitted: float,
                     attempt: list[Any], tries: int = 1, **metadata: Any) -> None:
        """Count and announce a call that raised ``exc`` (``attempt``: worker, start)."""
        self._counters.failure(exc)
        worker, started = attempt
        now = trio.current_time()
        self._emit("call.exception", {"duration": now - submitted,
                                      "queue_wait": started - submitted, "attempts": tries},
                   command=command, call=call_id, worker=worker.id if worker else None,
                   error=type(exc).__name__, **metadata)

    def _call_succeeded(self, command: str, call_id: int, submitted: float,
                        attempt: list[Any], tries: int = 1,
                        measurements: dict[str, float] | None = None,
                        **metadata: Any) -> None:
        """Count and announce a call that returned, and feed the latency figures."""
        worker, started = attempt
        now = trio.current_time()
        self._counters.success(now - submitted)
        self._dispatcher.record_service_time(now - started)
        worker.latencies.append(now - started)
        if not telemetry.enabled("call.stop"):
            return
        self._emit("call.stop", {"duration": now - submitted, "queue_wait": started - submitted,
                                 "attempts": tries, **(measurements or {})},
                   command=command, call=call_id, worker=worker.id, **metadata)

    async def _run(self, command: str, args: Any, timeout: float | None,
                   on_progress: ProgressCallback | None, session_id: str | None,
                   idempotent: bool = False, pinned: Worker | None = None,
                   attempt: list[Any] | None = None, target: str | None = None) -> Any:
        # telemetry names a dynamic call by its target ("call:dspy.Predict"), so that
        # listeners and exporters (whose command labels are bounded) can tell them apart
        label = command if target is None else f"{command}:{target}"
        meta: dict[str, Any] = {} if target is None else {"target": target}
        call_id, submitted = self._call_started(label, **meta)
        # the worker and the start of the last try (the caller may want to know who served)
        if attempt is None:
            attempt = [None, submitted]
        else:
            attempt[:] = [None, submitted]
        tries = 1
        try:
            deadline = self._deadline(timeout)
            while True:
                try:
                    result = await self._attempt(command, args, deadline, on_progress,
                                                 session_id, attempt, pinned)
                    break
                except SnakepitError as exc:
                    delay = self._retry_delay(exc, tries, deadline, idempotent)
                    if delay is None:
                        raise
                    self._emit("call.retry", {"attempt": tries, "delay": delay},
                               command=label, call=call_id, error=type(exc).__name__, **meta)
                    await trio.sleep(delay)
                    tries += 1
        except BaseException as exc:
            self._call_failed(exc, label, call_id, submitted, attempt, tries, **meta)
            raise
        self._call_succeeded(label, call_id, submitted, attempt, tries, None, **meta)
        return result

    async def _attempt(self, command: str, args: Any, deadline: float,
                       on_progress: ProgressCallback | None, session_id: str | None,
                       attempt: list[Any], pinned: Worker | None = None) -> Any:
        """One try: through the breaker, to a worker, and back. Records the worker and
        when it started in ``attempt`` (for telemetry). ``pinned``: only that worker
        (it holds an object the call uses)."""
        breaker = self._breaker
        probe = breaker.before(command) if breaker is not None else False
        try:
            if pinned is not None:
                worker = attempt[0] = await acquire_pinned(self, pinned, deadline)
                attempt[1] = trio.current_time()
                result = await worker.call(command, args, deadline=deadline,
                                           session_id=session_id, on_progress=on_progress)
            elif session_id is None:
                self._check_open()
                free = self._dispatcher.try_acquire()
                if free is None:
                    queued = QueuedCall(command, args, deadline, on_progress, attempt)
                    result = await (self._dispatcher.run_queued(queued) if math.isinf(deadline)
                                    else self._call_when_free(queued, deadline))
                else:
                    attempt[0] = free
                    attempt[1] = trio.current_time()
                    result = await free.call(command, args, deadline=deadline,
                                             on_progress=on_progress)
            else:
                session = self.sessions.touch(session_id)
                session.in_use += 1
                try:
                    worker = attempt[0] = await self._affinity.acquire(session, deadline)
                    attempt[1] = trio.current_time()
                    result = await worker.call(command, args, deadline=deadline,
                                               session_id=session_id, on_progress=on_progress)
                finally:
                    session.in_use -= 1
                    session.last_used = trio.current_time()  # its TTL counts from here
        except BaseException as exc:
            if attempt[0] is None and isinstance(exc, SnakepitError):
                attempt[1] = trio.current_time()  # it failed while waiting for a worker
            if breaker is not None:
                # any ending, a cancellation included: a probe must never stay running
                breaker.after(command, exc, probe=probe)
            raise
        if breaker is not None:
            breaker.after(command, None, probe=probe)
        return result

    async def _call_when_free(self, queued: QueuedCall, deadline: float) -> Any:
        """No unit was free: the call waits in the queue, and is sent as soon as one
        frees, within ``deadline`` (an infinite one needs no scope: ``_attempt`` then
        awaits the dispatcher directly, one coroutine less a call)."""
        with trio.CancelScope(deadline=deadline):
            return await self._dispatcher.run_queued(queued)
        if queued.pending is None:
            raise QueueTimeout("the call's deadline passed while it waited for a worker")
        raise WorkerTimeout(f"call {queued.command!r} on worker {queued.attempt[0].id} "
                            "passed its deadline")

    def _retry_delay(self, error: SnakepitError, tries: int, deadline: float,
                     idempotent: bool) -> float | None:
        """Seconds to wait before retrying, or None when the call must fail now."""
        policy = self.config.retry
        if (policy is None or tries >= policy.max_attempts
                or not is_retryable(error, idempotent=idempotent, only=policy.only)):
            return None
        delay = retry_delay(policy, tries, error)
        if trio.current_time() + delay >= deadline:
            return None  # no time left for another attempt within the one deadline
        return delay
