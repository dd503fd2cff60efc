"""Waits on real processes, measured in real time whatever Trio's clock is.

Trio lets a test replace the run's clock with :class:`trio.testing.MockClock`, whose
time moves only when the test jumps it (or, with ``autojump_threshold``, whenever every
task is blocked). A pool's timers split in two kinds:

- the application's: a call's ``timeout``, session TTLs, restart backoff, retries, the
  circuit breaker, ``worker_ttl``. They stay on Trio's clock, so a test can jump them.
- the process's: the handshake (``startup_timeout``), ``shutdown_grace``,
  ``kill_timeout``, ``cancel_grace``, health checks and heartbeats. A real process does
  not run faster because a test jumped the clock, and a jump must not read as a
  worker's silence, so under a MockClock these use :func:`move_on_after`,
  :func:`fail_after` and :func:`sleep` here, which a timer thread ends in real time.
  Under the real clock they are plain :func:`trio.move_on_after` and friends.

An *autojumping* MockClock (pytest-trio's ``autojump_clock``) jumps to the next
deadline as soon as every task waits -- and a pool's tasks wait on real processes, so
every call would time out at once. :class:`_AutojumpPause` keeps such a clock from
jumping while the pool waits on a process (a call in flight, a start, a shutdown) by
letting it run at real speed meanwhile; when the pool is idle it jumps as before.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from trio.testing import MockClock

__all__ = ["fail_after", "monotonic", "move_on_after", "pause_autojump", "sleep",
           "virtual_clock"]

#: Real time for heartbeats: a worker's silence is measured with this, never with a
#: clock a test may jump.
monotonic = time.monotonic


def virtual_clock() -> MockClock | None:
    """The run's clock if it is a :class:`trio.testing.MockClock`, else None.

    Cheap: a run whose process never imported ``trio.testing`` cannot have one.
    """
    testing = sys.modules.get("trio.testing")
    if testing is None:
        return None
    clock = trio.lowlevel.current_clock()
    return clock if isinstance(clock, testing.MockClock) else None


class _Timer:
    """A callback to run in a Trio run at a real (monotonic) time; cancellable."""

    __slots__ = ("callback", "cancelled", "token")

    def __init__(self, token: trio.lowlevel.TrioToken, callback: Callable[[], object]) -> None:
        self.token, self.callback, self.cancelled = token, callback, False

    def fire(self) -> None:
        if not self.cancelled:
            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(self.callback)


class _TimerThread:
    """One daemon thread for every real-time timer of the process (a heap of them)."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._heap: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def call_after(self, seconds: float, callback: Callable[[], object]) -> _Timer:
        timer = _Timer(trio.lowlevel.current_trio_token(), callback)
        if math.isinf(seconds):
            return timer  # never fires
        with self._wake:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._order), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="snakepit-realtime")
                self._thread.start()
            self._wake.notify()
        return timer

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    heapq.heappop(self._heap)[2].fire()
                self._wake.wait(self._heap[0][0] - now if self._heap else None)


_timers = _TimerThread()


@contextlib.contextmanager
def move_on_after(seconds: float) -> Iterator[trio.CancelScope]:
    """:func:`trio.move_on_after`, counted in real time under a MockClock.

    Under an autojumping MockClock the wait also pauses the autojump: it is a wait on
    a real process, which no jump can shorten.
    """
    clock = virtual_clock()
    if clock is None:
        with trio.move_on_after(seconds) as scope:
            yield scope
        return
    scope = trio.CancelScope()
    timer = _timers.call_after(seconds, scope.cancel)
    try:
        with _holding(), scope:
            yield scope
    finally:
        timer.cancelled = True


@contextlib.contextmanager
def fail_after(seconds: float) -> Iterator[trio.CancelScope]:
    """:func:`trio.fail_after`, counted in real time under a MockClock.

    Raises:
        trio.TooSlowError: the block did not finish within ``seconds``.
    """
    with move_on_after(seconds) as scope:
        yield scope
    if scope.cancelled_caught:
        raise trio.TooSlowError


async def sleep(seconds: float) -> None:
    """:func:`trio.sleep`, counted in real time under a MockClock (no autojump pause:
    the periodic tasks that sleep -- heartbeats, health checks -- wait on nothing)."""
    clock = virtual_clock()
    if clock is None:
        await trio.sleep(seconds)
        return
    scope = trio.CancelScope()
    timer = _timers.call_after(seconds, scope.cancel)
    try:
        with scope:
            await trio.sleep_forever()
    finally:
        timer.cancelled = True


def _nothing() -> None:
    """Scheduled only to wake the run loop's I/O wait."""


class _AutojumpPause(trio.abc.Instrument):
    """Keeps an autojumping MockClock from jumping while a pool waits on a process.

    Before each I/O wait (the moment the clock would jump) it asks whether any pool
    waits on a real process: a timed process wait (:func:`move_on_after`) or a start or
    shutdown in progress (:func:`pause_autojump`), or a call in flight (each pool's
    count, polled). While one does, the clock runs at real speed with autojump off, so
    a call's ``timeout`` counts the worker's real time; once none does, the test's
    ``rate`` and ``autojump_threshold`` are restored. Either switch happens after Trio
    has chosen this wait's length, so it also wakes the wait at once (an empty
    ``run_sync_soon``) and lets the next one be chosen with the new settings.
    """

    def __init__(self, clock: MockClock) -> None:
        self.clock = clock
        self.token = trio.lowlevel.current_trio_token()
        self.holds = 0
        self.in_flight: dict[int, Callable[[], int]] = {}
        self.saved: tuple[float, float] | None = None  # the test's (rate, threshold)

    def before_io_wait(self, timeout: float) -> None:
        busy = self.holds > 0 or any(count() for count in self.in_flight.values())
        if busy and self.saved is None:
            self.saved = (self.clock.rate, self.clock.autojump_threshold)
            self.clock.autojump_threshold = math.inf
            self.clock.rate = 1.0
            self.token.run_sync_soon(_nothing)  # this wait was primed to jump
        elif not busy and self.saved is not None:
            self.restore()
            self.token.run_sync_soon(_nothing)  # this wait was sized for real time

    def restore(self) -> None:
        if self.saved is not None:
            self.clock.rate, self.clock.autojump_threshold = self.saved
            self.saved = None


_pause: trio.lowlevel.RunVar[_AutojumpPause | None] = trio.lowlevel.RunVar(
    "snakepit_autojump_pause", default=None)


@contextlib.contextmanager
def _holding() -> Iterator[None]:
    """Count a wait on a real process with this run's autojump pause, if any."""
    pause = _pause.get()
    if pause is None:
        yield
        return
    pause.holds += 1
    try:
        yield
    finally:
        pause.holds -= 1


@contextlib.contextmanager
def pause_autojump(in_flight: Callable[[], int]) -> Iterator[Callable[[], contextlib.
                                                                        AbstractContextManager[None]]]:
    """Register a pool (its in-flight count) with the run's autojump pause.

    A no-op unless the run's clock is a MockClock with a finite ``autojump_threshold``.
    Yields a function whose context marks a real wait of the pool's own (its start,
    its shutdown). The first pool installs the instrument; the last one out removes
    it and gives the test its clock settings back.
    """
    clock = virtual_clock()
    if clock is None or math.isinf(clock.autojump_threshold):
        yield contextlib.nullcontext
        return
    pause = _pause.get()
    if pause is None:
        pause = _AutojumpPause(clock)
        _pause.set(pause)
        trio.lowlevel.add_instrument(pause)
    key = id(in_flight)
    pause.in_flight[key] = in_flight
    try:
        yield _holding
    finally:
        del pause.in_flight[key]
        if not pause.in_flight and pause.holds == 0:
            trio.lowlevel.remove_instrument(pause)
            pause.restore()
            _pause.set(None)
