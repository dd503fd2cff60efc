"""A live worker: the host's handle on one process and the calls in flight on it.

The worker's life from spawn to reap is :func:`snakepit.worker.run.run_worker`; this
module is what happens in between: sending calls, routing answers to the callers who
wait for them, abandoning calls that time out, and ending the worker.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable
from typing import Any

import outcome
import trio

from snakepit.config import PoolConfig
from snakepit.errors import (
    ProtocolError,
    SnakepitError,
    WorkerCrashedBeforeStart,
)
from snakepit.process.launch import WorkerProcess
from snakepit.protocol.messages import (
    Beat,
    Chunk,
    Credit,
    Drop,
    Emit,
    End,
    Error,
    HostCall,
    Message,
    Ping,
    Pong,
    Progress,
    Result,
    Results,
    Welcome,
    Withdrawn,
    call_to_wire,
)
from snakepit.protocol.shm import SharedMemoryCodec
from snakepit.worker.calls import ChunkBuffer, error_from_wire
from snakepit.worker.connection import Connection
from snakepit.worker.ending import Ending, WorkerState
from snakepit.worker.inflight import InFlight
from snakepit.worker.lifecycle import Call, CallEvent
from snakepit.worker.nested import HostSide, NestedCalls
from snakepit.worker.recall import Recall, Seat
from snakepit.worker.stderr import StderrLog

__all__ = ["Worker", "WorkerCall", "WorkerState"]

log = logging.getLogger("snakepit.worker")


WorkerCall = Call["Worker"]
"""A call as a worker holds it."""


class Worker(Ending):
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
        self.reserved = 0
        """Capacity units handed out by the dispatcher and not yet released."""
        self.parked = 0
        """Free units the dispatcher keeps back while the worker is held."""
        self.calls_served = 0
        self.calls_started = 0
        """Calls sent to the worker; reaching ``max_calls`` retires it (no more are sent)."""
        self.welcome: Welcome | None = None
        self.connection = Connection(process.stdin, process.stdout, config.max_frame_size)
        self.stderr = StderrLog(worker_id, process.stderr)
        self._send = self.connection.send
        self._send_map = self.connection.send_map
        self._release = release
        self.seat: Seat | None = None
        """The dispatcher that hands out this worker's capacity (set when it is added)."""
        self.inflight = InFlight(worker_id)
        """Calls sent and not answered, in the order they were sent."""
        self.nested = NestedCalls(self)
        """Calls it runs outside its units (nested in a host tool's caller, set-up)."""
        self.host: HostSide | None = None
        """Serves its ``host_call`` and ``emit`` frames (set when the pool adopts it)."""
        self._ids = itertools.count(1)
        self.recall = Recall(self)
        """Calls taken back from the worker: abandoned, held on, withdrawn."""
        self._last_answer = 0.0
        self.nursery: trio.Nursery | None = None
        self.end_reason: SnakepitError | None = None
        """The error calls in flight get when the worker ends (None: a crash)."""
        self.shutdown_sent = False
        self._pings: dict[int, trio.Event] = {}
        self._now = trio.lowlevel.current_clock().current_time
        """The run's clock (see ``CallPath``): read at each call's send and answer."""
        self.started_at = self._now()
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
    def capacity(self) -> int:
        """Calls the worker runs at once (its declared concurrency)."""
        return self.inflight.capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self.inflight.capacity = value

    @property
    def accepting(self) -> bool:
        """Whether new calls may be sent to this worker."""
        return self.state is WorkerState.READY

    @property
    def running(self) -> bool:
        """Past its handshake and not dead: it may hold calls."""
        return self.state is WorkerState.READY or self.state is WorkerState.STOPPING

    @property
    def available(self) -> bool:
        """Accepting, and not held by an abandoned call that may be stuck."""
        return self.state is WorkerState.READY and not self.recall.holds

    @property
    def in_flight(self) -> int:
        return len(self.inflight)

    def busy_since(self) -> float:
        """When the call now at the front of a busy worker started, at the earliest."""
        return self._last_answer

    def on_message(self, message: Message) -> None:
        """Act on one frame from the worker (the reader calls this)."""
        if isinstance(message, Result):
            self._finish(message.id, outcome.Value(message.value), message.service_time)
        elif isinstance(message, Results):  # a batch call's answer, read by pool.map
            self._finish(message.id, outcome.Value(message), message.ran)
        elif isinstance(message, Error):
            if message.id is None:
                raise ProtocolError(f"worker {self.id} reported: {message.message}")
            self._finish(message.id, outcome.Error(error_from_wire(message)))
        elif isinstance(message, Chunk):
            call = self._lookup(message.id)
            if call.stream is None:
                raise ProtocolError(f"chunk for call {message.id}, which is not a stream")
            if not call.abandoned:
                call.stream.push(message.value)
        elif isinstance(message, End):
            self._finish(message.id, outcome.Value(None))
        elif isinstance(message, Withdrawn):
            self._withdrawn(message.id)
        elif isinstance(message, Beat):
            pass  # the connection noted the time it arrived
        elif isinstance(message, Pong):
            event = self._pings.pop(message.id, None)
            if event is not None:
                event.set()
        elif isinstance(message, HostCall | Emit):
            if self.host is None:
                raise ProtocolError(f"worker {self.id} sent {type(message).__name__} to a "
                                    "host that serves no host calls")
            if isinstance(message, HostCall):
                self.host.host_call(self, message)
            else:
                self.host.emitted(self, message)
        elif isinstance(message, Progress):
            progressing = self.inflight.get(message.id) or self.nested.get(message.id)
            if progressing is not None:  # else it raced the call's answer: dropped
                progressing.report_progress(message.done, message.total, message.message,
                                            self.config.name, self.id)
        else:
            raise ProtocolError(f"unexpected {type(message).__name__} from worker {self.id}")

    def on_result(self, call_id: int, value: Any, service_time: Any = None) -> None:
        """A ``result`` frame (the reader's fast path, skipping :meth:`on_message`);
        ``service_time``: how long the handler ran, as the worker measured it."""
        self._finish(call_id, outcome.Value(value), service_time)

    def _lookup(self, call_id: int) -> WorkerCall:
        call = self.inflight.get(call_id) or self.nested.get(call_id)
        if call is None:
            raise ProtocolError(f"worker {self.id} answered unknown call id {call_id}")
        return call

    def _take_back(self, call_id: int) -> WorkerCall:
        """Remove an answered (or withdrawn) call; its unit and shared memory are free."""
        call = self.inflight.remove(call_id)
        if self.shared_memory is not None and self.shared_memory.exported:
            self.shared_memory.release(call_id)  # the worker has read its arguments
        return call

    def _finish(self, call_id: int, answer: outcome.Outcome[Any],
                service_time: Any = None) -> None:
        if self.host is not None and self.host.runs:
            self._tools_end(call_id)
        if self.nested.calls:  # (checked first: rare, and the hot path pays one lookup)
            nested = self.nested.take(call_id)
            if nested is not None:  # no unit to give back, no place in the order
                nested.settle(answer)
                return
        call = self._take_back(call_id)
        now = self._now()
        if self.seat is not None:
            # How long the handler ran: as the worker measured it, or else from when the
            # call could start (sent, or the previous answer) to its answer -- never the
            # round trip, which grows with the pipe's depth.
            if type(service_time) is not float:
                service_time = now - max(call.sent_at, self._last_answer)
            call.ran_for = service_time
            # per item for a batch: the handler's own time
            self.seat.record_service_time(service_time / call.batch if call.batch
                                          else service_time)
        self._last_answer = now
        self.calls_served += 1
        call.settle(answer)
        self._release(self)
        if call.abandoned_at_front or self.recall.deferred:
            self.recall.answered(call, answer)
        if self.killed_on_purpose and not self.inflight and not self.shutdown_sent:
            self.request_shutdown()  # a retiring worker's last call is done

    def _withdrawn(self, call_id: int) -> None:
        """The worker gave back a call it had not started: it runs elsewhere."""
        call = self._take_back(call_id)
        self._release(self)
        call.back_to_queue(self._requeue, CallEvent.WITHDRAWN)
        self.recall.given_back(call)

    def _requeue(self, call: WorkerCall) -> None:
        if self.seat is None:
            call.fail(WorkerCrashedBeforeStart(
                f"call {call.command!r} never started on worker {self.id}"))
        else:
            self.seat.requeue(call)

    # -- calls ---------------------------------------------------------------------
    def start_call(self, command: str, args: Any, *, deadline: float,
                   session_id: str | None = None, window: int | None = None,
                   effective_deadline: float | None = None, movable: bool = True,
                   nest: WorkerCall | None = None) -> WorkerCall:
        """Send a call on a capacity unit the caller holds; returns its :class:`Call`.

        ``effective_deadline``: the caller's deadline with its enclosing cancel scopes
        taken into account, when the call is sent from another task (a queued call).
        ``nest``: a call waiting in a host tool, whose capacity this one borrows.

        Raises:
            PayloadError: the arguments cannot be encoded or are too large; nothing was
                sent and the capacity unit has been returned.
        """
        call: WorkerCall = Call(command, args, deadline, session_id=session_id, window=window,
                    effective_deadline=effective_deadline, movable=movable)
        if window is not None:
            call.stream = ChunkBuffer()
        if nest is not None:
            self.nested.send(call, self._ids, nest)
        else:
            self.send_call(call)
        return call

    def send_nested(self, call: WorkerCall, nest: WorkerCall | None) -> None:
        """Send ``call`` outside the units (see :mod:`snakepit.worker.nested`)."""
        self.nested.send(call, self._ids, nest)

    def _tools_end(self, call_id: int) -> None:
        """The call ``call_id`` ended here: its host tools stop."""
        call = self.inflight.get(call_id) or self.nested.get(call_id)
        if call is not None and self.host is not None:
            self.host.call_ended(call)

    def send_call(self, call: WorkerCall) -> None:
        """Send a queued ``call`` on a capacity unit held for it.

        Raises:
            PayloadError: as :meth:`start_call`; the unit has been returned.
        """
        call_id = next(self._ids)
        try:
            if call.batch and "batch" not in (self.welcome.capabilities if self.welcome else ()):
                raise ProtocolError(f"worker {self.id} does not take batch calls (pool.map "
                                    "needs a worker announcing the 'batch' capability)")
            self._send_map(call_to_wire(call_id, call.command, call.args, call.session_id,
                                        call.wall_deadline, call.window, call.batch))
        except SnakepitError:  # PayloadError: unencodable or oversized
            self._release(self)
            raise
        call.id = call_id
        call.worker = self
        call.sent_at = self._now()
        self.inflight.add(call)
        self.calls_started += 1
        if self.config.max_calls is not None and self.calls_started >= self.config.max_calls:
            # Counted when sent, not when answered: with pipelining a worker may hold
            # two calls at once, and a limit checked on answers would let it serve more.
            # The calls already sent are within its budget: it runs them, none withdrawn.
            self.retire(f"was sent max_calls ({self.config.max_calls})", withdraw=False)

    def grant_credit(self, call: WorkerCall, n: int) -> None:
        """Let the worker send ``n`` more chunks of a streaming call."""
        if not call.answered:
            self._send(Credit(call.id, n))

    def abandon(self, call: WorkerCall) -> None:
        """The caller stopped waiting for ``call`` (see :class:`Recall`)."""
        if self.host is not None and self.host.runs:
            self.host.call_ended(call)
        if call in self.nested:
            self.nested.abandon(call)
        else:
            self.recall.abandon(call)

    async def look_again(self, call: WorkerCall) -> None:
        """See :meth:`Recall.look_again`."""
        await self.recall.look_again(call)

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

    def retire(self, reason: str, *, withdraw: bool = True) -> None:
        """Recycle: take no new calls, finish those started, then exit to be replaced.

        With ``withdraw``, calls still waiting in its pipe are withdrawn to run
        elsewhere. The supervisor starts the replacement at once and does not count it
        as a failure.
        """
        if self.state is not WorkerState.READY:
            return
        log.info("recycling worker %s (pid %d): %s", self.id, self.pid, reason)
        self.killed_on_purpose = True
        self.state = WorkerState.STOPPING
        if withdraw:
            self.recall.withdraw_unstarted()
        if not self.inflight:
            self.request_shutdown()
        if self.on_retire is not None:
            self.on_retire()

    def drop_session(self, session_id: str) -> None:
        """Tell the worker to forget the state it keeps for ``session_id``."""
        if self.state is WorkerState.READY:
            self.connection.send_later(Drop(session_id))
