"""One call's life cycle, from the dispatch queue to its answer, as a state machine.

Every calling path (``execute``, session calls, streams, the enhanced bridge's
``pool.call``, whatever the worker's language) drives a :class:`Call` through the same
states, so that the question "may this call have run?" has one answer, kept in one place::

                 send (room at the front)
       QUEUED ─────────────────────────────▶ STARTED ──answer──▶ ANSWERED
        │  ▲  \\ send (behind c unanswered)   ▲     │
        │  │   ▼                              │     ├─abandon─▶ ABANDONED ──answer──▶ ANSWERED
        │  │   SENT ──reach front─────────────┘     └─lost────▶ FAILED
        │  │    │ │
        │  │    │ └──withdraw──▶ WITHDRAWING ──withdrawn──┐
        │  │    └──lost (it never started)─────────────────┤
        │  └────────────────────────────────────────────────┘  (back to the front of the queue)
        ├──cancel──▶ CANCELLED
        └──expire / pool closed──▶ FAILED

- **QUEUED**: waits in the dispatcher for a unit of some worker's capacity.
- **SENT**: in a worker's pipe behind ``concurrency`` calls that are unanswered: by
  what the host has read, it has not started (a worker starts calls in order, at most
  ``concurrency`` at once, each only after answering an earlier one).
- **STARTED**: the worker may have started it.
- **WITHDRAWING**: the host asked for it back (``withdraw``); the worker decides, and
  answers ``withdrawn`` (then it is QUEUED again, with its original deadline) or runs it.
- **ABANDONED**: its caller gave up (deadline or cancellation) once it was sent; its
  answer will be discarded, and its capacity unit comes back with it.
- **ANSWERED**, **CANCELLED**, **FAILED**: the end.

A call that never started is never lost with its worker: when the worker dies, is
killed, or retires, the calls it had not started go back to the front of the dispatch
queue (``lost`` from SENT or WITHDRAWING) and run elsewhere -- unless they cannot
(strict session, an object that lives in that worker) or their deadline has passed.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import outcome
import trio

from snakepit import telemetry
from snakepit.errors import (
    QueueTimeout,
    SnakepitError,
    WorkerCrashedBeforeStart,
    WorkerTimeout,
)

if TYPE_CHECKING:
    from snakepit.worker.calls import ChunkBuffer, ProgressCallback


log = logging.getLogger("snakepit.worker")


class CallState(enum.Enum):
    """Where a :class:`Call` is in its life (see the module's diagram)."""

    QUEUED = "queued"
    SENT = "sent"
    STARTED = "started"
    WITHDRAWING = "withdrawing"
    ABANDONED = "abandoned"
    ANSWERED = "answered"
    CANCELLED = "cancelled"
    FAILED = "failed"


class CallEvent(enum.Enum):
    """What can happen to a call."""

    SEND_FRONT = "send_front"
    """Sent to a worker with room to start it at once."""
    SEND_BEHIND = "send_behind"
    """Sent to a worker's pipe behind ``concurrency`` unanswered calls."""
    REACH_FRONT = "reach_front"
    """An earlier call was answered: this one may start now."""
    WITHDRAW = "withdraw"
    WITHDRAWN = "withdrawn"
    ANSWER = "answer"
    ABANDON = "abandon"
    """The caller stopped waiting."""
    REQUEUE = "requeue"
    """It never started and its worker is gone (or it was withdrawn): queue it again."""
    FAIL = "fail"
    """It cannot run (lost with a worker that may have started it, or it cannot go
    elsewhere, or its deadline passed, or the pool closed)."""


S, E = CallState, CallEvent

TRANSITIONS: dict[tuple[CallState, CallEvent], CallState] = {
    (S.QUEUED, E.SEND_FRONT): S.STARTED,
    (S.QUEUED, E.SEND_BEHIND): S.SENT,
    (S.QUEUED, E.ABANDON): S.CANCELLED,
    (S.QUEUED, E.FAIL): S.FAILED,
    (S.SENT, E.REACH_FRONT): S.STARTED,
    (S.SENT, E.WITHDRAW): S.WITHDRAWING,
    (S.SENT, E.ANSWER): S.ANSWERED,  # answered before the host saw it reach the front
    (S.SENT, E.ABANDON): S.ABANDONED,
    (S.SENT, E.REQUEUE): S.QUEUED,
    (S.SENT, E.FAIL): S.FAILED,
    (S.STARTED, E.ANSWER): S.ANSWERED,
    (S.STARTED, E.ABANDON): S.ABANDONED,
    (S.STARTED, E.FAIL): S.FAILED,
    # The worker decides: a withdraw that reached it before the call started wins.
    (S.WITHDRAWING, E.REACH_FRONT): S.WITHDRAWING,
    (S.WITHDRAWING, E.WITHDRAWN): S.QUEUED,
    (S.WITHDRAWING, E.ANSWER): S.ANSWERED,
    (S.WITHDRAWING, E.ABANDON): S.ABANDONED,
    (S.WITHDRAWING, E.REQUEUE): S.QUEUED,
    (S.WITHDRAWING, E.FAIL): S.FAILED,
    (S.ABANDONED, E.REACH_FRONT): S.ABANDONED,
    (S.ABANDONED, E.ANSWER): S.ANSWERED,
    (S.ABANDONED, E.WITHDRAWN): S.CANCELLED,
    (S.ABANDONED, E.REQUEUE): S.CANCELLED,  # nobody waits for it any more
    (S.ABANDONED, E.FAIL): S.CANCELLED,
}
"""Every legal transition; anything else is a bug in the host (:class:`IllegalTransition`)."""

_BY_VALUE: dict[tuple[str, str], CallState] = {
    (state._value_, event._value_): target for (state, event), target in TRANSITIONS.items()}
"""The table keyed by the members' values: a tuple of two str hashes in C, where the
members' own ``__hash__`` is Python code (three calls a call: ~2 µs saved)."""

ON_A_WORKER = frozenset({S.SENT, S.STARTED, S.WITHDRAWING, S.ABANDONED})
"""States in which the call holds a unit of its worker's capacity."""

FINAL = frozenset({S.ANSWERED, S.CANCELLED, S.FAILED})


class IllegalTransition(RuntimeError):
    """A call was driven through a transition the table does not allow (a host bug)."""


class Holder(Protocol):
    """What a call needs of the worker it was sent to (a
    :class:`~snakepit.worker.worker.Worker`)."""

    id: str

    def abandon(self, call: Any) -> None:
        """The caller stopped waiting for ``call``."""

    async def look_again(self, call: Any) -> None:
        """Settle whether an abandoned ``call`` will never start, once frames the
        worker wrote have been read."""


W = TypeVar("W", bound=Holder)


_VIEW = object()
"""What a caller whose answer is a received view is woken with (see ``Call.settle``)."""


class Call(Generic[W]):
    """One call: what to send, who waits for it, and where it is in its life.

    The caller parks on the call (:meth:`wait`) once and stays parked while the call
    moves: from the dispatch queue to a worker, back to the queue if that worker gives
    it back unstarted, to another worker, until the answer reschedules the caller. No
    Event, Lock or task per call (DESIGN.md: that caps the host near 18-20k calls/s).
    """

    __slots__ = ("abandoned_at_front", "answer", "args", "batch", "bounced", "command",
                 "deadline", "grace_deferred", "id", "movable", "never_started", "on_moved",
                 "on_progress", "ran_for", "sent_at", "session_id", "settled", "state",
                 "stream", "task", "unqueue", "wall_deadline", "window", "worker")

    def __init__(self, command: str, args: Any, deadline: float = math.inf, *,
                 session_id: str | None = None, window: int | None = None,
                 effective_deadline: float | None = None, movable: bool = True,
                 batch: int = 0) -> None:
        self.command = command
        self.args = args
        self.batch = batch
        """Items in a batch call (``args`` is their list; ``pool.map``), else 0."""
        self.ran_for = 0.0
        """How long the worker took to answer it once it could start (set on its answer)."""
        self.session_id = session_id
        self.window = window
        self.deadline = deadline
        """The call's own deadline on the Trio clock (``inf``: none)."""
        # The worker gets the tighter of the call's deadline and any enclosing scope's,
        # read here, in the caller's task (the call may be sent from another one).
        if effective_deadline is None:
            effective_deadline = trio.current_effective_deadline()
        tightest = min(deadline, effective_deadline)
        self.wall_deadline: float | None = (
            None if math.isinf(tightest) else time.time() + (tightest - trio.current_time()))
        """The deadline as Unix time, as the worker is told it (None: none). It stays
        the same wherever the call goes."""
        self.state = CallState.QUEUED
        self.id = 0
        """Its id on the wire of its current worker (0 while queued)."""
        self.worker: W | None = None
        """The worker it was last sent to (kept after the answer: who served it)."""
        self.sent_at = 0.0
        self.task: trio.lowlevel.Task | None = None
        self.movable = movable
        """It may run on another worker than the one it was sent to (false for strict
        sessions and calls on objects that live in one worker)."""
        self.bounced = False
        """It was given back unstarted by a worker that died."""
        self.unqueue: Callable[[Call[W]], None] | None = None
        """Takes it out of the dispatch queue (set by the dispatcher while it waits there)."""
        self.answer: outcome.Outcome[Any] | None = None
        """The answer, kept when it came before anyone waited for it."""
        self.on_moved: Callable[[W], None] | None = None
        """Told when it is sent to a worker other than the first (session visits)."""
        self.on_progress: ProgressCallback | None = None
        self.stream: ChunkBuffer | None = None
        self.settled: trio.Event | None = None  # created when its cancel_grace is watched
        self.never_started = False
        """Abandoned while queued in the worker, where it will never start (its deadline
        had passed, or the worker refuses cancelled calls): a caller whose deadline
        passed gets QueueTimeout, and no cancel_grace is watched."""
        self.grace_deferred = False
        """Abandoned while queued in the worker: its cancel_grace is watched only once it
        may have started."""
        self.abandoned_at_front = False
        """Abandoned when it may have started: its worker takes no new call until it
        answers (or is killed)."""

    def __repr__(self) -> str:
        return f"<Call {self.command!r} {self.state.value} id={self.id}>"

    # -- states ------------------------------------------------------------------------
    def advance(self, event: CallEvent) -> CallState:
        """Apply ``event``; returns the new state.

        Raises:
            IllegalTransition: the table has no such transition from the current state.
        """
        try:
            state = self.state = _BY_VALUE[self.state._value_, event._value_]
        except KeyError:
            raise IllegalTransition(f"{self!r}: no transition on {event.value}") from None
        return state

    @property
    def answered(self) -> bool:
        """It has come to its end (answered, cancelled or failed): nothing more happens."""
        return self.state in FINAL

    @property
    def abandoned(self) -> bool:
        """Its caller stopped waiting."""
        return self.state is CallState.ABANDONED or self.state is CallState.CANCELLED

    def report_progress(self, done: float, total: float | None, message: str | None,
                        pool: str, worker: str) -> None:
        """A ``progress`` frame for the call: to telemetry, and to its ``on_progress``."""
        if telemetry.enabled("call.progress"):
            telemetry.emit("call.progress", {"done": done, "total": total or 0.0},
                           {"pool": pool, "worker": worker, "command": self.command,
                            "message": message})
        if self.on_progress is not None and not self.abandoned:
            try:
                self.on_progress(done, total, message)
            except Exception:
                log.exception("on_progress callback of call %d raised", self.id)

    # -- the caller's side ----------------------------------------------------------------
    async def wait(self) -> Any:
        """Park until the call's answer arrives (a value, or an exception raised here).

        Cancelled while it waits in the dispatch queue, it leaves the queue at once.
        """
        if self.answer is not None:  # it failed before anyone waited (it was never sent)
            await trio.lowlevel.checkpoint()
            return self.answer.unwrap()
        self.task = trio.lowlevel.current_task()

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            self.task = None
            if self.state is CallState.QUEUED and self.unqueue is not None:
                self.unqueue(self)
            return trio.lowlevel.Abort.SUCCEEDED

        woken = await trio.lowlevel.wait_task_rescheduled(abort)
        if woken is _VIEW:  # the answer is a view of a segment: see settle()
            view: outcome.Outcome[Any] = self.answer  # type: ignore[assignment]
            self.answer = None
            return view.unwrap()
        return woken

    def settle(self, answer: outcome.Outcome[Any], event: CallEvent = CallEvent.ANSWER) -> None:
        """Deliver the final answer to whoever waits (the caller, or a stream's consumer)."""
        self.advance(event)
        if self.stream is not None:
            self.stream.finish(answer)
        elif self.task is not None:
            if type(answer) is outcome.Value and type(answer.value) is memoryview:
                # A view of a shared-memory segment: the caller is woken with a marker
                # and takes the view from the call. Trio's run loop keeps a task's last
                # wake-up value until it runs another task, and the view kept alive
                # there kept its segment from the caller's very next call (a 64 MiB
                # echo then wrote into a fresh segment: 63 ms instead of 13).
                self.answer = answer
                answer = outcome.Value(_VIEW)
            trio.lowlevel.reschedule(self.task, answer)
            self.task = None
        else:
            self.answer = answer
        if self.settled is not None:
            self.settled.set()

    def fail(self, error: SnakepitError) -> None:
        """End the call with ``error`` (it cannot run, or its worker failed it)."""
        self.settle(outcome.Error(error), CallEvent.FAIL)

    def back_to_queue(self, requeue: Callable[[Call[W]], None],
                      event: CallEvent = CallEvent.REQUEUE) -> None:
        """It never started and never will where it was: ``requeue`` it (at the front of
        the dispatch queue), or end it when nobody waits for it any more."""
        state = self.advance(event)
        if state is CallState.CANCELLED:
            if self.settled is not None:
                self.settled.set()
            return
        self.id = 0
        requeue(self)


def abandon(call: Call[Any]) -> None:
    """The caller stopped waiting for ``call`` (its deadline, or a cancellation)."""
    if call.state is CallState.QUEUED:
        if call.unqueue is not None:
            call.unqueue(call)
    elif call.worker is not None and call.state in ON_A_WORKER:
        call.worker.abandon(call)


async def wait_for_answer(call: Call[Any], deadline: float) -> Any:
    """Wait for ``call``'s answer until ``deadline``; returns the result.

    Raises:
        QueueTimeout: the deadline passed before the call started anywhere.
        WorkerCrashedBeforeStart: the deadline passed after a worker that died gave the
            call back unstarted, before another could take it.
        WorkerTimeout: the deadline passed while a worker may have been running it.
        ...and whatever the call's answer raises.
    """
    # The wait is written out twice rather than put in a helper: each coroutine level
    # between the caller and the parked task costs on the way down and back up (a level
    # less here and in the pool's entry points saved ~0.6 µs of host CPU per call).
    if math.isinf(deadline):  # no scope to enter and leave: ~8 µs a call saved
        try:
            return await call.wait()
        except BaseException:  # the caller was cancelled: give the call up
            if not call.answered:
                abandon(call)
            raise
    with trio.CancelScope(deadline=deadline):
        try:
            return await call.wait()
        except BaseException:  # cancelled (deadline or caller): give the call up first
            if not call.answered:
                abandon(call)
            raise
    raise await deadline_error(call, f"call {call.command!r}")


async def deadline_error(call: Call[Any], what: str) -> SnakepitError:
    """The error for ``call`` (or stream), abandoned because its deadline passed.

    ``QueueTimeout`` when it never started: it was still in the dispatch queue, or waiting
    in a busy worker's pipe (it will never run); ``WorkerCrashedBeforeStart`` when a dead
    worker gave it back unstarted and no other took it in time; else ``WorkerTimeout``.
    When the worker had written frames the reader had not taken yet (a heartbeat, say),
    it waits for the reader -- a scheduling round -- and looks again.
    """
    worker = call.worker
    if call.id == 0 or worker is None:  # never on a worker when it was given up
        if call.bounced:
            return WorkerCrashedBeforeStart(
                f"{what} was given back unstarted by a worker that died, and its deadline "
                "passed before another worker was free")
        return QueueTimeout(f"{what}: the deadline passed while it waited for a worker")
    await worker.look_again(call)
    if call.never_started:
        return QueueTimeout(f"{what} waited in worker {worker.id}'s pipe behind running "
                            "calls until its deadline passed; it never started")
    return WorkerTimeout(f"{what} on worker {worker.id} passed its deadline")
