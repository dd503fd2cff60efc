"""Typed, immutable snapshots of a pool's state (``pool.stats()``)."""

from __future__ import annotations

import attrs


@attrs.frozen
class WorkerStats:
    """One worker slot at the moment of the snapshot."""

    id: str
    """Stable slot id, ``"<pool>-<n>"``; survives restarts."""
    pid: int | None
    """Pid of the current process, or ``None`` between processes."""
    state: str
    """``starting``, ``ready``, ``stopping``, ``dead`` (gone, replacement not begun yet),
    ``restarting`` (waiting out the backoff), ``failed`` or ``stopped``."""
    calls_served: int
    """Calls answered by this slot's workers, across restarts."""
    in_flight: int
    """Calls sent to the current process and not yet answered."""
    restarts: int
    """Times the slot started a replacement process."""


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
    """Calls that raised (any error, timeouts and crashes included)."""
    timeouts: int
    """Calls that passed their deadline (queue or worker)."""
    crashes: int
    """Calls lost to a worker that died under them."""
    rejected: int
    """Calls refused with PoolSaturated."""
    restarts: int
    """Worker restarts, all slots together."""
