"""Typed, immutable snapshots of a pool's state (``pool.stats()``)."""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import trio

from snakepit.errors import (
    CallCancelled,
    PoolSaturated,
    QueueTimeout,
    WorkerCrashed,
    WorkerTimeout,
)
from snakepit.worker.slot_events import SlotState


def percentiles(samples: Iterable[float], points: Sequence[float]) -> tuple[float | None, ...]:
    """The nearest-rank percentiles of ``samples`` at ``points`` (None when empty)."""
    ordered = sorted(samples)
    if not ordered:
        return tuple(None for _ in points)
    last = len(ordered) - 1
    return tuple(ordered[min(last, round(point * last))] for point in points)


@attrs.frozen
class WorkerStats:
    """One worker slot at the moment of the snapshot."""

    id: str
    """Stable slot id, ``"<pool>-<n>"``; survives restarts."""
    pid: int | None
    """Pid of the current process, or ``None`` between processes."""
    state: SlotState
    """A :class:`~snakepit.SlotState` (a string enum: ``state == "ready"`` works):
    ``starting``, ``ready``, ``stopping``, ``dead`` (the process is gone, ``pid`` is
    ``None``, the replacement not begun yet), ``restarting`` (waiting out the backoff),
    ``waiting`` (the pool kind has nowhere to place a worker yet), ``failed`` (past the
    restart intensity; tries again after ``restart.cooldown``) or ``stopped``."""
    calls_served: int
    """Calls answered by this slot's workers, across restarts."""
    in_flight: int
    """Calls sent to the slot's processes and not yet answered: the current one and any
    that retired (recycling) and still finishes its calls."""
    restarts: int
    """Times the slot started a replacement process."""
    info: Mapping[str, Any] = attrs.field(factory=dict)
    """What the pool kind reports about the slot (a GPU pool: its device and memory)."""
    latency_p50: float | None = None
    """Median run time (worker acquired to answer) of the slot's recent successful calls,
    in seconds (over the last 512, across restarts; ``None`` before the first)."""
    latency_p99: float | None = None
    """99th percentile of the same."""
    rss: int | None = None
    """Resident memory of the current process in bytes (``None`` when unreadable)."""


@attrs.frozen
class PoolStats:
    """A whole pool at the moment of the snapshot."""

    name: str
    """The pool's name."""
    workers: tuple[WorkerStats, ...]
    """One entry per slot, in slot order."""
    queue_depth: int
    """Calls waiting for a worker."""
    in_flight: int
    """Calls sent to workers and not yet answered."""
    calls: int
    """Calls submitted (including those rejected or failed)."""
    succeeded: int
    """Calls that returned a result."""
    failed: int
    """Calls that raised (any error, timeouts and crashes included), except those whose
    caller cancelled them (``cancelled``)."""
    timeouts: int
    """Calls that passed their deadline (queue or worker)."""
    crashes: int
    """Calls lost to a worker that died under them."""
    rejected: int
    """Calls refused with PoolSaturated."""
    restarts: int
    """Worker restarts, all slots together."""
    cancelled: int = 0
    """Calls whose caller cancelled them before they finished (a client that went away,
    a cancel scope around the call): not failures -- the pool did nothing wrong."""
    sessions: int = 0
    """Live sessions in the pool's store."""
    draining: bool = False
    """An operator drained the pool: it refuses new calls (:class:`PoolDraining`)."""
    latency_p50: float | None = None
    """Median duration of recent successful calls (queue wait included), in seconds."""
    latency_p95: float | None = None
    """95th percentile of the same."""
    latency_p99: float | None = None
    """99th percentile of the same (over the last 2048 calls)."""


class CallCounters:
    """A pool's running totals and its window of recent call durations."""

    WINDOW = 2048

    def __init__(self) -> None:
        self.calls = self.succeeded = self.failed = self.cancelled = 0
        self.timeouts = self.crashes = self.rejected = 0
        self.durations: collections.deque[float] = collections.deque(maxlen=self.WINDOW)

    def success(self, duration: float) -> None:
        self.succeeded += 1
        self.durations.append(duration)

    def failure(self, exc: BaseException) -> None:
        if isinstance(exc, trio.Cancelled | CallCancelled):
            self.cancelled += 1  # the caller's choice, not the pool's failure
            return
        self.failed += 1
        if isinstance(exc, WorkerTimeout | QueueTimeout):
            self.timeouts += 1
        elif isinstance(exc, WorkerCrashed):
            self.crashes += 1
        elif isinstance(exc, PoolSaturated):
            self.rejected += 1

    def snapshot(self) -> dict[str, Any]:
        """The :class:`PoolStats` fields these counters own."""
        p50, p95, p99 = percentiles(self.durations, (0.50, 0.95, 0.99))
        return {"calls": self.calls, "succeeded": self.succeeded, "failed": self.failed,
                "cancelled": self.cancelled,
                "timeouts": self.timeouts, "crashes": self.crashes, "rejected": self.rejected,
                "latency_p50": p50, "latency_p95": p95, "latency_p99": p99}


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_memory(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (Linux /proc), or None if unreadable."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None
