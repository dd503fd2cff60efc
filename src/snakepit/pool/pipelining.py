"""Pipelining policy: how deep a worker's pipe goes, and which waiting call a free
worker takes from another's pipe.

The pipeline is only as deep as the calls are quick: a worker offers
``1 + PIPELINE_BUDGET / mean service time`` units per unit of concurrency, at least two
(one running, one waiting: the behaviour of slow calls) and at most ``pipeline_depth``.
So about a millisecond of expected work waits in a pipe, whatever the call length:
trivial calls go ``pipeline_depth`` (16) deep, while calls of a millisecond or more
queue no deeper than before. On the 2-core box, going 8 deep cut the host's CPU per
call from ~25 to ~17 µs and the worker's from ~20 to ~11 µs; 16 deep, 18.1 -> 16.3 µs
idle and 20.3 -> 18.4 µs with the other CPU busy (more answers per read: fewer
``epoll_ctl``, ``readv`` and wake-ups per call). The service time is how long handlers
run, measured from when a call could start -- not the round trip, which grows with the
pipe's depth and would make a deep pipe shallower on a machine slow to wake the other
CPU.

Work stealing: a worker that frees while nobody waits takes a call still waiting in
the pipe of a worker whose front call has run longer than ``STEAL_AFTER`` (quick calls
start before a withdraw could reach them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from snakepit.worker.worker import Worker, WorkerCall

PIPELINE_BUDGET = 0.001
"""Seconds of expected work (mean service time x calls) a worker's pipe may hold."""

STEAL_AFTER = 0.002
"""A worker that frees takes a call waiting in another's pipe only when the call ahead
of it there has run this long."""


def pipeline_depth(configured: int, mean_service_time: float) -> int:
    """Units per unit of concurrency now: deeper while calls are quick."""
    if configured <= 2:
        return configured
    return max(2, min(configured, 1 + int(PIPELINE_BUDGET / mean_service_time)))


class ServiceTime:
    """The moving average of how long handlers run (measured from when a call could
    start, not from when it was sent: a deeper pipe must not look slower), and the
    :func:`pipeline_depth` it sets -- worked out again only when the mean leaves the
    range ``(low, high]`` the depth holds for, not on each of the dispatcher's
    releases."""

    __slots__ = ("_high", "_low", "_mean", "configured", "depth")

    def __init__(self, configured: int, mean: float = 0.001) -> None:
        self.configured = configured
        self.depth = 2
        self._low, self._high = 0.0, -1.0  # holds for nothing yet
        self._mean = 0.0
        self.mean = mean

    @property
    def mean(self) -> float:
        """Seconds."""
        return self._mean

    @mean.setter
    def mean(self, seconds: float) -> None:
        self._mean = seconds
        if self._low < seconds <= self._high:
            return
        configured = self.configured
        depth = self.depth = pipeline_depth(configured, max(seconds, 1e-12))
        if configured <= 2:
            self._low, self._high = -math.inf, math.inf
            return
        # 1 + int(B / m) == depth  <=>  B / depth < m <= B / (depth - 1); the ends clamp
        self._low = 0.0 if depth == configured else PIPELINE_BUDGET / depth
        self._high = math.inf if depth == 2 else PIPELINE_BUDGET / (depth - 1)

    def record(self, seconds: float) -> None:
        """A handler ran ``seconds``."""
        self.mean = self._mean + (seconds - self._mean) * 0.05


def call_to_steal(workers: Iterable[Worker], thief: Worker
                  ) -> tuple[Worker, WorkerCall] | None:
    """The call ``thief`` should take, and the worker whose pipe holds it: the newest
    call not yet started in the deepest pipe of a worker that takes calls, can withdraw,
    and whose front call has run at least ``STEAL_AFTER`` (a call already being
    withdrawn is not asked for twice). ``None`` when there is none."""
    victim, deepest, newest = None, 0, None
    started_before: float | None = None
    for worker in workers:
        if len(worker.inflight) <= worker.capacity:
            continue  # nothing waits behind what it runs (the common case: cheap)
        recall = worker.recall
        # a retiring worker runs the calls it was sent within its max_calls
        if worker is thief or not worker.accepting or not recall.withdraws:
            continue
        waiting = recall.unstarted()
        if len(waiting) <= deepest:
            continue
        if started_before is None:
            started_before = trio.current_time() - STEAL_AFTER
        if worker.busy_since() <= started_before:
            victim, deepest, newest = worker, len(waiting), waiting[-1]
    if victim is None or newest is None:
        return None
    return victim, newest


def steal_for(thief: Worker, workers: Iterable[Worker]) -> None:
    """``thief`` has a free unit and nobody waits: withdraw a call stuck in another
    worker's pipe (:func:`call_to_steal`); it comes back through the dispatcher's
    ``requeue`` once its worker answers ``withdrawn``, and goes to a free unit."""
    found = call_to_steal(workers, thief)
    if found is not None:
        victim, call = found
        victim.recall.withdraw(call)
        victim.connection.write_now()
