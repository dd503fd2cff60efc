"""The path of one call: a deadline, a worker, attempts with retries, and back.

A part of :class:`~snakepit.Pool` (which delegates ``execute`` and friends here); the
hot path is written inline (no context managers, no telemetry payloads unless someone
listens) because every microsecond here is paid per call (DESIGN.md: ~10 µs per Trio
task switch on the reference box).
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
    RefLost,
    SessionWorkerLost,
    SnakepitError,
    WorkerCrashedBeforeStart,
)
from snakepit.pool.tools import lender
from snakepit.resilience.retry import is_retryable, retry_delay
from snakepit.worker.calls import ProgressCallback
from snakepit.worker.lifecycle import Call, wait_for_answer

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
    from snakepit.worker.worker import Worker, WorkerCall


class Attempt:
    """One try of a call, as telemetry and the enhanced bridge see it afterwards."""

    __slots__ = ("call", "submitted")

    def __init__(self, submitted: float) -> None:
        self.submitted = submitted
        self.call: WorkerCall | None = None
        """The call of the last try (``None`` until one was made)."""

    @property
    def worker(self) -> Worker | None:
        """The worker that ran (or last held) the call; ``None`` if it was never sent."""
        return self.call.worker if self.call is not None else None

    @property
    def started(self) -> float:
        """When the call was last sent to a worker (the submission time if never)."""
        if self.call is None or self.call.worker is None:
            return self.submitted
        return self.call.sent_at


class Gate:
    """Whether the pool takes new calls: every calling path asks here first."""

    __slots__ = ("closed", "draining", "pool")

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.closed = False
        self.draining = False
        """Set by ``Pool.drain``: new calls are refused with :class:`PoolDraining`."""

    def check(self) -> None:
        """Raise PoolClosed or PoolDraining when the pool takes no new calls."""
        if self.closed:
            raise PoolClosed("the pool is closed")
        if self.draining:
            raise PoolDraining(f"pool {self.pool!r} is drained by its operator")


class CallPath:
    """Acquiring a worker within a deadline, and running a call's attempts.

    Args:
        config: the pool's configuration (``call_timeout``, ``retry``).
        gate: whether the pool takes calls.
        dispatcher: hands out worker capacity.
        affinity: routes a session's calls.
        counters: the pool's call statistics.
        breaker: the circuit breaker, if the pool has one.
        emit: the pool's telemetry.
    """

    def __init__(self, config: PoolConfig, gate: Gate, dispatcher: Dispatcher,
                 affinity: SessionAffinity, counters: CallCounters,
                 breaker: CircuitBreaker | None, emit: Callable[..., None]) -> None:
        self.config = config
        self.gate = gate
        self.dispatcher = dispatcher
        self.affinity = affinity
        self.sessions: SessionStore = affinity.store
        self._counters = counters
        self._breaker = breaker
        self._emit = emit
        # The run's clock, bound once: trio.current_time() costs about twice as much
        # (~150 ns against ~80 on the reference box), and a call reads it four times.
        self._now = trio.lowlevel.current_clock().current_time

    def deadline(self, timeout: float | None) -> float:
        """The Trio-clock deadline for ``timeout`` seconds (``config.call_timeout`` by
        default; ``inf`` for none).

        Raises:
            ConfigError: ``timeout`` is not a number > 0.
        """
        if timeout is None:
            timeout = self.config.call_timeout
        if timeout is None:
            return math.inf
        if not timeout > 0:
            raise ConfigError([f"timeout: must be a number > 0 (got {timeout!r})"])
        return self._now() + timeout

    async def acquire(self, deadline: float, worker: Worker | None = None) -> Worker:
        """A unit of any worker (or of ``worker`` only), waiting until ``deadline``."""
        self.gate.check()
        return await self.dispatcher.acquire_until(deadline, worker)

    async def acquire_pinned(self, worker: Worker, deadline: float) -> Worker:
        """A unit of the one worker that holds an object; RefLost if it is gone."""
        if not worker.accepting:
            raise RefLost(f"worker {worker.id} (pid {worker.pid}), which held the object, "
                          "is gone")
        try:
            acquired = await self.acquire(deadline, worker)
        except SessionWorkerLost as exc:
            raise RefLost(f"worker {worker.id} (pid {worker.pid}) died while the call "
                          "waited for it; the object is gone") from exc
        if not acquired.accepting:
            self.dispatcher.release(acquired)
            raise RefLost(f"worker {worker.id} (pid {worker.pid}) is being recycled; the "
                          "object goes with it")
        return acquired

    # -- calls -------------------------------------------------------------------------
    def call_started(self, command: str, **metadata: Any) -> tuple[int, float]:
        """Count a submitted call and announce it; returns its id and submission time."""
        self._counters.calls += 1
        call_id = next(_call_ids)
        if telemetry.enabled("call.start"):  # build no payload nobody reads
            self._emit("call.start", {"queue_depth": self.dispatcher.queue_depth},
                       command=command, call=call_id, **metadata)
        return call_id, self._now()

    def call_failed(self, exc: BaseException, command: str, call_id: int, submitted: float,
                     attempt: Attempt, tries: int = 1, **metadata: Any) -> None:
        """Count and announce a call that raised ``exc``."""
        self._counters.failure(exc)
        worker = attempt.worker
        now = self._now()
        started = attempt.started if worker is not None else now
        self._emit("call.exception", {"duration": now - submitted,
                                      "queue_wait": started - submitted, "attempts": tries},
                   command=command, call=call_id, worker=worker.id if worker else None,
                   error=type(exc).__name__, **metadata)

    def call_succeeded(self, command: str, call_id: int, submitted: float,
                        attempt: Attempt, tries: int = 1,
                        measurements: dict[str, float] | None = None,
                        **metadata: Any) -> None:
        """Count and announce a call that returned, and feed the latency figures."""
        worker, started = attempt.worker, attempt.started
        assert worker is not None
        now = self._now()
        self._counters.success(now - submitted)
        worker.latencies.append(now - started)
        if not telemetry.enabled("call.stop"):
            return
        self._emit("call.stop", {"duration": now - submitted, "queue_wait": started - submitted,
                                 "attempts": tries, **(measurements or {})},
                   command=command, call=call_id, worker=worker.id, **metadata)

    async def run_attempts(self, command: str, args: Any, timeout: float | None,
                            on_progress: ProgressCallback | None, session_id: str | None,
                            idempotent: bool = False, pinned: Worker | None = None,
                            target: str | None = None) -> tuple[Any, Attempt]:
        """Run a call, retrying per the policy; returns its result and its last try.
        ``target``: a dynamic call's target, which names it in telemetry."""
        # telemetry names a dynamic call by its target ("call:dspy.Predict"), so that
        # listeners and exporters (whose command labels are bounded) can tell them apart
        label = command if target is None else f"{command}:{target}"
        meta: dict[str, Any] = {} if target is None else {"target": target}
        call_id, submitted = self.call_started(label, **meta)
        attempt = Attempt(submitted)
        tries = 1
        try:
            deadline = self.deadline(timeout)
            while True:
                try:
                    if session_id is None and pinned is None and self._breaker is None:
                        # the usual call, without _attempt's coroutine level between the
                        # caller and its parked task (see wait_for_answer)
                        self.gate.check()
                        result = await wait_for_answer(
                            self._send(command, args, deadline, on_progress, attempt),
                            deadline)
                    else:
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
            self.call_failed(exc, label, call_id, submitted, attempt, tries, **meta)
            raise
        self.call_succeeded(label, call_id, submitted, attempt, tries, None, **meta)
        return result, attempt

    async def _attempt(self, command: str, args: Any, deadline: float,
                       on_progress: ProgressCallback | None, session_id: str | None,
                       attempt: Attempt, pinned: Worker | None = None) -> Any:
        """One try: through the breaker, to a worker, and back; the call is kept in
        ``attempt``. ``pinned``: only that worker (it holds an object the call uses)."""
        self.gate.check()  # the one gate every call passes (drain included)
        breaker = self._breaker
        probe = breaker.before(command) if breaker is not None else False
        try:
            if pinned is not None:
                worker = await self.acquire_pinned(pinned, deadline)
                call = attempt.call = Call(command, args, deadline, session_id=session_id,
                                           movable=False)
                call.on_progress = on_progress
                worker.send_call(call)
                result = await wait_for_answer(call, deadline)
            elif session_id is None:
                result = await wait_for_answer(
                    self._send(command, args, deadline, on_progress, attempt), deadline)
            else:
                result = await self._session_attempt(command, args, deadline, on_progress,
                                                     session_id, attempt)
        except BaseException as exc:
            if breaker is not None:
                # any ending, a cancellation included: a probe must never stay running
                breaker.after(command, exc, probe=probe)
            raise
        if breaker is not None:
            breaker.after(command, None, probe=probe)
        return result

    def _send(self, command: str, args: Any, deadline: float,
              on_progress: ProgressCallback | None, attempt: Attempt) -> WorkerCall:
        """Make a call of no session and send it: nested on the worker of the host tool
        that makes it (on its caller's capacity), on a free unit, or to the queue."""
        call = attempt.call = Call(command, args, deadline)
        call.on_progress = on_progress
        run = lender()  # made by a host tool: on the capacity of its caller
        free = None if run is not None else self.dispatcher.try_acquire()
        if run is not None:
            run.worker.send_nested(call, run.call)
        elif free is None:
            self.dispatcher.queue(call)
        else:
            free.send_call(call)
        return call

    async def _session_attempt(self, command: str, args: Any, deadline: float,
                               on_progress: ProgressCallback | None, session_id: str,
                               attempt: Attempt) -> Any:
        """One try of a session's call: on its worker, per the session's affinity. In
        ``prefer`` mode a call its worker gives back unstarted may run on another (which
        then counts as visited); in ``strict`` mode it fails with SessionWorkerLost."""
        session = self.sessions.touch(session_id)
        session.in_use += 1
        strict = session.mode == "strict"
        try:
            # made by a host tool whose caller runs where the session lives (or the
            # session has no worker yet): nested there, on the caller's capacity
            run = lender()
            nest = run is not None and (session.worker is None or
                                        self.affinity.bound_worker(session) is run.worker)
            if run is not None and nest:
                worker = run.worker
                if session.worker is None:
                    self.sessions.bind(session, worker.id, worker.pid)
            else:
                worker = await self.affinity.acquire(session, deadline)
            call = attempt.call = Call(command, args, deadline, session_id=session_id,
                                       movable=not strict)
            call.on_progress = on_progress
            if not strict:
                call.on_moved = lambda moved: self.sessions.visit(session, moved.id, moved.pid)
            if run is not None and nest:
                worker.send_nested(call, run.call)
            else:
                worker.send_call(call)
            return await wait_for_answer(call, deadline)
        except WorkerCrashedBeforeStart as exc:
            if strict:
                self.sessions.worker_lost(worker.id, worker.pid)  # unbound: the next
                session.lost = False  # call binds afresh; this caller is told now
                raise SessionWorkerLost(
                    f"the worker holding session {session_id!r} died before starting the "
                    "call, and the session's state with it") from exc
            raise
        finally:
            session.in_use -= 1
            session.last_used = trio.current_time()  # its TTL counts from here

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
