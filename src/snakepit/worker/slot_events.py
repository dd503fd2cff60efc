"""What a worker slot can be in, and what its workers tell it.

:class:`SlotState` is the state ``pool.stats()`` reports for each slot (``WorkerStats
.state``): a :class:`enum.StrEnum`, so ``state == "ready"`` and formatting keep working
for code written against the plain strings of earlier versions.

The slot runs each of its workers as its own task (an *incarnation*); the incarnation
reports to the slot's supervising loop with the small event classes below, sent over a
memory channel, instead of bare strings.
"""

from __future__ import annotations

import enum

import attrs

from snakepit.errors import SnakepitError
from snakepit.worker.worker import Worker, WorkerState

__all__ = ["SlotEvent", "SlotState", "StartFailed", "WorkerEnded", "WorkerReady",
           "WorkerRetired"]


class SlotState(enum.StrEnum):
    """The state of one worker slot, as ``pool.stats()`` reports it."""

    STARTING = "starting"
    """A worker process is starting: spawned, its handshake not done yet."""
    READY = "ready"
    """The slot's worker takes calls."""
    STOPPING = "stopping"
    """The slot's worker takes no new calls and is ending: it retires (recycling), the
    host killed it, or the pool is shutting down."""
    DEAD = "dead"
    """The worker process is gone and the slot has not begun its replacement yet (a
    moment, between the exit and the restart decision). ``pid`` is ``None``."""
    RESTARTING = "restarting"
    """Waiting out the restart backoff after the worker died or failed to start."""
    WAITING = "waiting"
    """The pool kind has nowhere to place a worker yet (a GPU pool whose devices are
    all tainted); the slot tries again later, without counting a failure."""
    FAILED = "failed"
    """More than ``restart.max_restarts`` restarts within ``restart.period``: the slot
    runs no worker. With ``restart.cooldown`` set it tries again after the cool-down;
    with ``None`` it stays failed until the pool closes."""
    STOPPED = "stopped"
    """The pool is closed (or closing) and the slot runs no worker any more."""

    @classmethod
    def of_worker(cls, state: WorkerState) -> SlotState:
        """The slot state that shows a running worker's own state."""
        return cls(state.value)


@attrs.frozen
class WorkerReady:
    """Incarnation ``number``'s worker completed its handshake and takes calls."""

    number: int
    worker: Worker


@attrs.frozen
class WorkerRetired:
    """Incarnation ``number``'s worker retired (recycling): it finishes its calls while
    the slot starts its replacement."""

    number: int
    worker: Worker


@attrs.frozen
class WorkerEnded:
    """Incarnation ``number``'s worker process exited and every call on it is settled."""

    number: int
    worker: Worker


@attrs.frozen
class StartFailed:
    """Incarnation ``number`` could not start a worker (launch, spawn or handshake)."""

    number: int
    error: SnakepitError


SlotEvent = WorkerReady | WorkerRetired | WorkerEnded | StartFailed
"""What an incarnation reports to its slot."""
