"""A live worker: the host's handle on one process and the calls in flight on it.

The worker's life from spawn to reap is :func:`snakepit.worker.run.run_worker`; this
module is what happens in between: sending calls, routing answers to the callers who
wait for them, abandoning calls that time out, and ending the worker.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import itertools
import logging
import math
import signal
import time
from collections.abc import Callable
from typing import Any

import outcome
import trio

from snakepit import _realtime as realtime
from snakepit import telemetry
from snakepit.config import PoolConfig
from snakepit.errors import (
    PoolClosed,
    ProtocolError,
    QueueTimeout,
    SnakepitError,
    WorkerCrashed,
    WorkerCrashedBeforeStart,
    WorkerTimeout,
)
from snakepit.process.launch import WorkerProcess
from snakepit.protocol.messages import (
    Beat,
    Cancel,
    Chunk,
    Credit,
    Drop,
    End,
    Error,
    Message,
    Ping,
    Pong,
    Progress,
    Result,
    Shutdown,
    Welcome,
    call_to_wire,
)
from snakepit.protocol.shm import SharedMemoryCodec
from snakepit.worker.calls import ChunkBuffer, Pending, ProgressCallback, error_from_wire
from snakepit.worker.connection import Connection
from snakepit.worker.stderr import StderrLog

log = logging.getLogger("snakepit.worker")


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    DEAD = "dead"


class Worker:
    """The host's handle on one worker process.

    The pool's dispatcher hands a caller one unit of the worker's ``capacity`` (its
    declared concurrency); the unit comes back through ``release`` when the worker
    answers that call -- not when the caller stops waiting, so a worker never has more
    calls than it declared.
    """

    def __init__(self, worker_id: str, process: WorkerProcess, config: PoolConfig,
                 release: Callable[[Worker], None]) -> None:
        self.id = worker_id
        self.process = process
        self.pid = process.pid
        self.config = config
        self.state = WorkerState.STARTING
        self.capacity = 1
        self.reserved = 0
        """Capacity units handed out by the dispatcher and not yet released."""
        self.calls_served = 0
        self.calls_started = 0
        """Calls sent to the worker; reaching ``max_calls`` retires it (no more are sent)."""
        self.welcome: Welcome | None = None
        self.connection = Connection(process.stdin, process.stdout, config.max_frame_size)
        self.stderr = StderrLog(worker_id, process.stderr)
        self._send = self.connection.send
        self._send_map = self.connection.send_map
        self._release = release
        self._inflight: dict[int, Pending] = {}
        """Calls sent and not answered, in the order they were sent."""
        self._ids = itertools.count(1)
        self._deferred_graces = 0
        """Abandoned calls whose cancel_grace waits for them to reach the front."""
        self._nursery: trio.Nursery | None = None
        self.end_reason: SnakepitError | None = None
        """The error calls in flight get when the worker ends (None: a crash)."""
        self.shutdown_sent = False
        self._pings: dict[int, trio.Event] = {}
        self.started_at = trio.current_time()
        self.on_retire: Callable[[], None] | None = None
        """Called when the worker retires, so its slot starts the replacement at once."""
        self.latencies: collections.deque[float] = collections.deque(maxlen=512)
        """Run times (acquired to answered) of recent successful calls; the slot shares
        one window across its workers so per-worker percentiles survive restarts."""
        self.killed_on_purpose = False
        """Set when the host killed the worker over a call (timeout, cancel), not a fault."""
        self.killed = False
        """Set once the host has sent SIGKILL to the worker's process group."""
        self.shared_memory: SharedMemoryCodec | None = None
        """The codec, when large buffers travel through shared memory (see run.py)."""

    # -- state ---------------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        """Whether new calls may be sent to this worker."""
        return self.state is WorkerState.READY

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def on_message(self, message: Message) -> None:
        """Act on one frame from the worker (the reader calls this)."""
        if isinstance(message, Result):
            self._finish(message.id, outcome.Value(message.value))
        elif isinstance(message, Error):
            if message.id is None:
                raise ProtocolError(f"worker {self.id} reported: {message.message}")
            self._finish(message.id, outcome.Error(error_from_wire(message)))
        elif isinstance(message, Chunk):
            pending = self._lookup(message.id)
            if pending.stream is None:
                raise ProtocolError(f"chunk for call {message.id}, which is not a stream")
            if not pending.abandoned:
                pending.stream.push(message.value)
        elif isinstance(message, End):
            self._finish(message.id, outcome.Value(None))
        elif isinstance(message, Beat):
            pass  # the connection noted the time it arrived
        elif isinstance(message, Pong):
            event = self._pings.pop(message.id, None)
            if event is not None:
                event.set()
        elif isinstance(message, Progress):
            progressing = self._inflight.get(message.id)
            if progressing is None:
                return  # progress that raced the call's answer: harmless, dropped
            pending = progressing
            if telemetry.enabled("call.progress"):
                telemetry.emit("call.progress",
                               {"done": message.done, "total": message.total or 0.0},
                               {"pool": self.config.name, "worker": self.id,
                                "command": pending.command, "message": message.message})
            if pending.on_progress is not None and not pending.abandoned:
                try:
                    pending.on_progress(message.done, message.total, message.message)
                except Exception:
                    log.exception("on_progress callback of call %d raised", message.id)
        else:
            raise ProtocolError(f"unexpected {type(message).__name__} from worker {self.id}")

    def on_result(self, call_id: int, value: Any) -> None:
        """A ``result`` frame (the reader's fast path, skipping :meth:`on_message`)."""
        self._finish(call_id, outcome.Value(value))

    def _lookup(self, call_id: int) -> Pending:
        pending = self._inflight.get(call_id)
        if pending is None:
            raise ProtocolError(f"worker {self.id} answered unknown call id {call_id}")
        return pending

    def _finish(self, call_id: int, answer: outcome.Outcome[Any]) -> None:
        pending = self._lookup(call_id)
        del self._inflight[call_id]
        if self.shared_memory is not None and self.shared_memory.exported:
            self.shared_memory.release(call_id)  # the worker has read its arguments
        self.calls_served += 1
        pending.settle(answer)
        self._release(self)
        if self._deferred_graces:
            if pending.grace_deferred:  # answered while it waited: refused, most likely
                pending.grace_deferred = False
                self._deferred_graces -= 1
                pending.never_started = (isinstance(answer, outcome.Error)
                                         and isinstance(answer.error, QueueTimeout))
            self._watch_deferred_graces()
        if self.killed_on_purpose and not self._inflight and not self.shutdown_sent:
            self.request_shutdown()  # a retiring worker's last call is done

    # -- calls ---------------------------------------------------------------------
    def start_call(self, command: str, args: Any, *, deadline: float,
                   session_id: str | None = None, window: int | None = None,
                   effective_deadline: float | None = None) -> Pending:
        """Send a call on a capacity unit the caller holds; returns its :class:`Pending`.

        ``effective_deadline``: the caller's deadline with its enclosing cancel scopes
        taken into account, when the call is sent from another task (a queued call).

        Raises:
            PayloadError: the arguments cannot be encoded or are too large; nothing was
                sent and the capacity unit has been returned.
        """
        call_id = next(self._ids)
        # The worker gets the tighter of the call's deadline and any enclosing scope's.
        if effective_deadline is None:
            effective_deadline = trio.current_effective_deadline()
        deadline = min(deadline, effective_deadline)
        wall_deadline = None
        if not math.isinf(deadline):
            wall_deadline = time.time() + (deadline - trio.current_time())
        try:
            self._send_map(call_to_wire(call_id, command, args, session_id, wall_deadline,
                                        window))
        except SnakepitError:  # PayloadError: unencodable or oversized
            self._release(self)
            raise
        pending = Pending(call_id, command, wall_deadline)
        if window is not None:
            pending.stream = ChunkBuffer()
        self._inflight[call_id] = pending
        self.calls_started += 1
        if self.config.max_calls is not None and self.calls_started >= self.config.max_calls:
            # Counted when sent, not when answered: with pipelining a worker may hold
            # two calls at once, and a limit checked on answers would let it serve more.
            self.retire(f"was sent max_calls ({self.config.max_calls})")
        return pending

    async def call(self, command: str, args: Any, *, deadline: float,
                   session_id: str | None = None,
                   on_progress: ProgressCallback | None = None) -> Any:
        """Run one call on a capacity unit the caller holds and return its result."""
        pending = self.start_call(command, args, deadline=deadline, session_id=session_id)
        pending.on_progress = on_progress
        if math.isinf(deadline):  # no scope to enter and leave: ~8 µs a call saved
            return await self._wait_answer(pending)
        with trio.CancelScope(deadline=deadline):
            return await self._wait_answer(pending)
        raise await self.deadline_error(pending, f"call {command!r}")

    async def deadline_error(self, pending: Pending, what: str) -> SnakepitError:
        """The error for an abandoned call (or stream) whose deadline passed after it was
        sent: ``QueueTimeout`` if it was still waiting in the worker's pipe (it will
        never run), else ``WorkerTimeout``.

        When that could not be told because the worker had written frames the reader
        had not taken yet (a heartbeat, say), it waits for the reader -- a scheduling
        round -- and looks again.
        """
        await self._look_again(pending)
        if pending.never_started:
            return QueueTimeout(f"{what} waited in worker {self.id}'s pipe behind running "
                                "calls until its deadline passed; it never started")
        return WorkerTimeout(f"{what} on worker {self.id} passed its deadline")

    async def _wait_answer(self, pending: Pending) -> Any:
        try:
            return await pending.wait()
        except BaseException:  # cancelled (deadline or caller): tell the worker to stop
            if not pending.answered:
                self.abandon(pending)
            raise

    def grant_credit(self, pending: Pending, n: int) -> None:
        """Let the worker send ``n`` more chunks of a streaming call."""
        if not pending.answered:
            self._send(Credit(pending.id, n))

    def abandon(self, pending: Pending) -> None:
        """The caller stopped waiting: ask the worker to stop, kill it if it will not.

        The call keeps its capacity unit until the worker answers, and that answer is
        discarded. A worker that does not answer within ``cancel_grace`` is killed,
        since its state is then unknown. A call still queued in the worker's pipe
        behind running calls is refused by the worker (it answers a cancel for a call
        it has not started, and never starts one whose deadline has passed), so its
        grace period starts only once it may have started -- the calls running ahead of
        it are never put at risk by it.
        """
        if pending.abandoned or pending.answered:
            return
        pending.abandoned = True
        pending.task = None
        if not self.accepting and self.state is not WorkerState.STOPPING:
            return
        if not self.may_have_started(pending):
            self._send(Cancel(pending.id))
            self.connection.write_now()  # in the pipe before the call can start
            if self._will_never_start(pending):
                pending.never_started = True
                return
            pending.grace_deferred = True
            self._deferred_graces += 1
            if self.connection.unread_bytes() and self._nursery is not None:
                with contextlib.suppress(RuntimeError):  # the worker's tasks are ending
                    self._nursery.start_soon(self._look_again, pending)
            return
        if self.config.cancel_grace == 0:
            self.kill(f"call {pending.command!r} was cancelled (cancel_grace is 0)",
                      on_purpose=True)
            return
        self._send(Cancel(pending.id))
        self._watch_grace(pending)

    def _watch_grace(self, pending: Pending) -> None:
        """Kill the worker unless it answers ``pending`` within ``cancel_grace``.

        A task watches, even for a ``cancel_grace`` of 0: a deferred call's refusal
        may be in the very batch of frames that brought it to the front.
        """
        pending.settled = trio.Event()
        try:
            if self._nursery is None:
                raise RuntimeError("no nursery")
            self._nursery.start_soon(self._cancel_watchdog, pending)
        except RuntimeError:
            # The worker's own tasks are already ending (the pool is being torn down
            # around us): nobody is left to watch the grace period, so do not wait.
            self.kill("cancelled while the worker was shutting down", on_purpose=True)

    def _watch_deferred_graces(self) -> None:
        """Start the grace period of abandoned calls that have reached the front."""
        for index, pending in enumerate(self._inflight.values()):
            if index >= self.capacity:
                return
            if pending.grace_deferred:
                pending.grace_deferred = False
                self._deferred_graces -= 1
                self._watch_grace(pending)

    async def _look_again(self, pending: Pending, rounds: int = 3) -> None:
        """A deferred call that could not be told never to start only because the worker
        had written frames the reader had not taken yet (a heartbeat, progress): once
        the reader has, look again. The cancel frame was written before, so what held
        then still holds; the reader may also have brought the call to the front, and
        then its grace period is being watched already."""
        for _ in range(rounds):
            if not (pending.grace_deferred and self.connection.unread_bytes()):
                return
            await self.connection.wait_read()
            if pending.grace_deferred and self._will_never_start(pending):
                pending.grace_deferred = False
                self._deferred_graces -= 1
                pending.never_started = True

    def may_have_started(self, pending: Pending) -> bool:
        """Whether the worker may have started ``pending``, by what the host has read.

        A worker starts calls in the order they were sent, at most ``capacity`` at a
        time, and each only after answering an earlier one. So a call with
        ``capacity`` older calls still unanswered has not started -- unless such an
        answer is already on its way, which :meth:`_will_never_start` rules out.
        """
        older = 0
        for call_id in self._inflight:
            if call_id == pending.id or older >= self.capacity:
                break
            older += 1
        return older < self.capacity

    def _will_never_start(self, pending: Pending) -> bool:
        """Whether ``pending``, just cancelled, has not started and never will.

        Needs ``capacity`` older calls unanswered and nothing the worker wrote left
        unread: then no older call had finished, so ``pending`` had not started. It never
        will if its deadline has passed (a worker never starts a call past its deadline;
        the clock is read first, so the deadline had passed before that moment) or if
        the worker has the ``refuse`` capability and the cancel frame is already in the
        pipe (written before ``pending`` could start, so it keeps it from starting).
        """
        if self.may_have_started(pending):
            return False
        expired = pending.wall_deadline is not None and time.time() >= pending.wall_deadline
        refuses = (self.connection.flushed and self.welcome is not None
                   and "refuse" in self.welcome.capabilities)
        return (expired or refuses) and self.connection.unread_bytes() == 0

    async def _cancel_watchdog(self, pending: Pending) -> None:
        assert pending.settled is not None
        with realtime.move_on_after(self.config.cancel_grace):
            await pending.settled.wait()
        if pending.settled.is_set():  # answered, perhaps just as the grace ran out
            return
        self.kill(f"call {pending.command!r} did not stop within cancel_grace "
                  f"({self.config.cancel_grace}s) after it was cancelled", on_purpose=True)

    async def ping(self) -> None:
        """Send a health-check ping and wait for the pong (no capacity unit is used).

        An idle worker answers at once; a busy serial worker only after its call, so
        the health checker pings idle workers only.
        """
        ping_id = next(self._ids)
        event = self._pings[ping_id] = trio.Event()
        try:
            self._send(Ping(ping_id))
            await event.wait()
        finally:
            self._pings.pop(ping_id, None)

    def retire(self, reason: str) -> None:
        """Recycle: take no new calls, finish those in flight, then exit to be replaced.

        The supervisor starts the replacement at once and does not count it as a failure.
        """
        if self.state is not WorkerState.READY:
            return
        log.info("recycling worker %s (pid %d): %s", self.id, self.pid, reason)
        self.killed_on_purpose = True
        self.state = WorkerState.STOPPING
        if not self._inflight:
            self.request_shutdown()
        if self.on_retire is not None:
            self.on_retire()

    def drop_session(self, session_id: str) -> None:
        """Tell the worker to forget the state it keeps for ``session_id``."""
        if self.state is WorkerState.READY:
            self.connection.send_later(Drop(session_id))

    # -- ending --------------------------------------------------------------------
    def kill(self, reason: str, *, on_purpose: bool = False) -> None:
        """Kill the process group now; calls in flight fail with WorkerCrashed(reason).

        ``on_purpose`` marks a kill over a call that would not stop (not a worker fault),
        which the supervisor does not count against the restart intensity.
        """
        if self.state is WorkerState.DEAD:
            return
        self.killed_on_purpose = self.killed_on_purpose or on_purpose
        log.warning("killing worker %s (pid %d): %s", self.id, self.pid, reason)
        self.state = WorkerState.STOPPING
        self.killed = True
        if self.end_reason is None:
            self.end_reason = WorkerCrashed(f"worker {self.id} was killed: {reason}")
        self.process.signal_group(signal.SIGKILL)

    def request_shutdown(self) -> None:
        """Send the shutdown frame: finish what is running, take nothing new, exit."""
        if self.state is WorkerState.READY or self.state is WorkerState.STARTING:
            self.state = WorkerState.STOPPING
        if not self.shutdown_sent and self.state is not WorkerState.DEAD:
            self.shutdown_sent = True
            self.end_reason = self.end_reason or PoolClosed("the pool is shutting down")
            self._send(Shutdown())

    def fail_all(self, error: SnakepitError, *, drained: bool = False) -> None:
        """Every call still in flight gets ``error``.

        ``drained``: the worker is gone and every frame it wrote has been read. Then,
        when ``error`` is a :class:`WorkerCrashed`, the calls that were still queued in
        its pipe (``capacity`` older calls unanswered: they cannot have started) get
        the retryable :class:`WorkerCrashedBeforeStart` instead.
        """
        pending_calls = list(self._inflight.values())
        self._inflight.clear()
        for index, pending in enumerate(pending_calls):
            if drained and index >= self.capacity and isinstance(error, WorkerCrashed):
                pending.settle(outcome.Error(WorkerCrashedBeforeStart(
                    f"call {pending.command!r} was queued in worker {self.id}, which died "
                    f"before starting it ({error})")))
            else:
                pending.settle(outcome.Error(error))
