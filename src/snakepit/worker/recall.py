"""Taking calls back from a worker: the calls whose callers gave up, and the calls that
should run elsewhere.

- **Abandoned calls** are cancelled cooperatively first: the call keeps its capacity
  unit until the worker answers, and that answer is discarded. A worker that does not
  answer within ``cancel_grace`` is killed, since its state is then unknown. A call
  still waiting in the worker's pipe behind running calls is refused by the worker (it
  answers a cancel for a call it has not started, and never starts one whose deadline
  has passed), so its grace period starts only once it may have started: the calls
  running ahead of it are never put at risk by it.
- **Holds**: a call abandoned while it may be running may never stop. Until it answers
  (or the worker is killed), the worker gets no new call, and the calls waiting behind
  it are withdrawn.
- **Withdrawal**: ``withdraw`` asks the worker for a call it has not started; it answers
  ``withdrawn`` (the call goes back to the dispatch queue) or runs it.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Protocol

import outcome
import trio

from snakepit import _realtime as realtime
from snakepit.config import PoolConfig
from snakepit.errors import QueueTimeout
from snakepit.protocol.messages import Cancel, Welcome, Withdraw
from snakepit.worker.connection import Connection
from snakepit.worker.inflight import InFlight
from snakepit.worker.lifecycle import Call, CallEvent, CallState


class Seat(Protocol):
    """What a worker needs of the dispatcher that hands out its capacity."""

    def release(self, worker: Any) -> None:
        """One unit of ``worker``'s capacity is free again."""

    def requeue(self, call: Call[Any]) -> None:
        """``call`` never started on its worker: send it elsewhere, first in line."""

    def resume(self, worker: Any) -> None:
        """``worker`` answered the call that held it: hand out its units again."""

    def record_service_time(self, seconds: float) -> None:
        """How long a handler ran (feeds the pipeline depth and ``retry_after``)."""


class Site(Protocol):
    """What :class:`Recall` needs of its worker."""

    id: str
    config: PoolConfig
    connection: Connection
    inflight: InFlight
    nursery: trio.Nursery | None
    welcome: Welcome | None
    seat: Seat | None

    @property
    def running(self) -> bool: ...

    @property
    def accepting(self) -> bool: ...

    def kill(self, reason: str, *, on_purpose: bool = False) -> None: ...


class Recall:
    """The calls one worker is asked to give back, and the grace periods watched."""

    def __init__(self, worker: Site) -> None:
        self.worker = worker
        self.deferred = 0
        """Abandoned calls whose cancel_grace waits for them to reach the front."""
        self.holds = 0
        """Abandoned calls that may be running: until each answers (or the worker is
        killed), the worker gets no new call -- it may be stuck."""
        self.withdrawing = 0
        """Withdraw frames sent and not answered yet."""

    # -- withdrawal ------------------------------------------------------------------
    @property
    def withdraws(self) -> bool:
        """Whether the worker can give back calls it has not started (``withdraw``)."""
        welcome = self.worker.welcome
        return welcome is not None and "withdraw" in welcome.capabilities

    def unstarted(self) -> list[Call[Any]]:
        """Calls waiting in the pipe that could be taken back and sent elsewhere."""
        return [call for call in self.worker.inflight.behind()
                if call.state is CallState.SENT and call.movable]

    def withdraw(self, call: Call[Any]) -> None:
        """Ask for ``call`` back; the worker answers ``withdrawn`` or runs it."""
        call.advance(CallEvent.WITHDRAW)
        self.withdrawing += 1
        self.worker.connection.send(Withdraw(call.id))

    def withdraw_unstarted(self) -> int:
        """Ask for every call waiting in the pipe back (they run elsewhere); returns how
        many were asked for. A worker that cannot withdraw keeps them: if it dies, they
        still go elsewhere, since they never started."""
        if not self.withdraws:
            return 0
        calls = self.unstarted()
        for call in calls:
            self.withdraw(call)
        if calls:
            self.worker.connection.write_now()  # in the pipe before the worker takes one
        return len(calls)

    def given_back(self, call: Call[Any]) -> None:
        """The worker answered ``withdrawn`` for ``call``."""
        self.withdrawing -= 1
        self.answered(call, None)

    # -- holds -----------------------------------------------------------------------
    def hold(self, call: Call[Any]) -> None:
        """``call`` was abandoned when it may be running and may never stop: send the
        worker nothing new, and take back what waits behind it."""
        call.abandoned_at_front = True
        self.holds += 1
        self.withdraw_unstarted()

    def answered(self, call: Call[Any], answer: outcome.Outcome[Any] | None) -> None:
        """``call`` left the worker (``answer``; ``None``: withdrawn): a hold may end, and
        a deferred grace period may start for the call now at the front."""
        if call.abandoned_at_front:
            call.abandoned_at_front = False
            self.holds -= 1
            seat = self.worker.seat
            if not self.holds and seat is not None and self.worker.accepting:
                seat.resume(self.worker)
        if not self.deferred:
            return
        if call.grace_deferred:  # answered while it waited: refused, most likely
            call.grace_deferred = False
            self.deferred -= 1
            call.never_started = (isinstance(answer, outcome.Error)
                                  and isinstance(answer.error, QueueTimeout))
        self._watch_deferred_graces()

    # -- abandoned calls -----------------------------------------------------------------
    def abandon(self, call: Call[Any]) -> None:
        """The caller stopped waiting: ask the worker to stop, kill it if it will not."""
        worker = self.worker
        if call.answered or call.abandoned:
            return
        at_front = worker.inflight.may_have_started(call)
        call.advance(CallEvent.ABANDON)
        call.task = None
        if not worker.running:  # not started yet, or already dead
            return
        if not at_front:
            worker.connection.send(Cancel(call.id))
            worker.connection.write_now()  # in the pipe before the call can start
            if self._will_never_start(call):
                call.never_started = True
                return
            call.grace_deferred = True
            self.deferred += 1
            if worker.connection.unread_bytes() and worker.nursery is not None:
                with contextlib.suppress(RuntimeError):  # the worker's tasks are ending
                    worker.nursery.start_soon(self.look_again, call)
            return
        self.hold(call)
        if worker.config.cancel_grace == 0:
            worker.kill(f"call {call.command!r} was cancelled (cancel_grace is 0)",
                        on_purpose=True)
            return
        worker.connection.send(Cancel(call.id))
        self._watch_grace(call)

    def _watch_grace(self, call: Call[Any]) -> None:
        """Kill the worker unless it answers ``call`` within ``cancel_grace``.

        A task watches, even for a ``cancel_grace`` of 0: a deferred call's refusal
        may be in the very batch of frames that brought it to the front.
        """
        call.settled = trio.Event()
        nursery = self.worker.nursery
        try:
            if nursery is None:
                raise RuntimeError("no nursery")
            nursery.start_soon(self._cancel_watchdog, call)
        except RuntimeError:
            # The worker's own tasks are already ending (the pool is being torn down
            # around us): nobody is left to watch the grace period, so do not wait.
            self.worker.kill("cancelled while the worker was shutting down", on_purpose=True)

    def _watch_deferred_graces(self) -> None:
        """Start the grace period of abandoned calls that have reached the front."""
        inflight = self.worker.inflight
        for index, call in enumerate(inflight):
            if index >= inflight.capacity:
                return
            if call.grace_deferred:
                call.grace_deferred = False
                self.deferred -= 1
                self.hold(call)
                self._watch_grace(call)

    async def look_again(self, call: Call[Any], rounds: int = 3) -> None:
        """A deferred call that could not be told never to start only because the worker
        had written frames the reader had not taken yet (a heartbeat, progress): once
        the reader has, look again. The cancel frame was written before, so what held
        then still holds; the reader may also have brought the call to the front, and
        then its grace period is being watched already."""
        connection = self.worker.connection
        for _ in range(rounds):
            if not (call.grace_deferred and connection.unread_bytes()):
                return
            await connection.wait_read()
            if call.grace_deferred and self._will_never_start(call):
                call.grace_deferred = False
                self.deferred -= 1
                call.never_started = True

    def _will_never_start(self, call: Call[Any]) -> bool:
        """Whether ``call``, just cancelled, has not started and never will.

        Needs ``capacity`` older calls unanswered and nothing the worker wrote left
        unread: then no older call had finished, so ``call`` had not started. It never
        will if its deadline has passed (a worker never starts a call past its deadline;
        the clock is read first, so the deadline had passed before that moment) or if
        the worker has the ``refuse`` capability and the cancel frame is already in the
        pipe (written before ``call`` could start, so it keeps it from starting).
        """
        worker = self.worker
        if worker.inflight.may_have_started(call):
            return False
        expired = call.wall_deadline is not None and time.time() >= call.wall_deadline
        refuses = (worker.connection.flushed and worker.welcome is not None
                   and "refuse" in worker.welcome.capabilities)
        return (expired or refuses) and worker.connection.unread_bytes() == 0

    async def _cancel_watchdog(self, call: Call[Any]) -> None:
        assert call.settled is not None
        with realtime.move_on_after(self.worker.config.cancel_grace):
            await call.settled.wait()
        if call.settled.is_set():  # answered, perhaps just as the grace ran out
            return
        self.worker.kill(f"call {call.command!r} did not stop within cancel_grace "
                         f"({self.worker.config.cancel_grace}s) after it was cancelled",
                         on_purpose=True)
