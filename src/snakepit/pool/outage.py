"""When a pool breaks (every slot failed) and when it comes back, told to everyone.

A slot that passes its restart intensity is *failed* (``slot.failed``, logged at ERROR
by the slot). Once every slot of the pool is failed the pool is *broken*: waiting and
new calls get :class:`~snakepit.errors.PoolBroken`, carrying ``retry_after`` when the
slots have a ``restart.cooldown``; the ``pool.broken`` event fires and an ERROR line is
logged. When a failed slot's cool-down ends it starts a worker again and calls wait for
it (as during any restart) instead of failing; once a worker is ready, ``pool.recovered``
fires with how long the pool was down, and a WARNING line says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from snakepit.worker.crashlog import RateLimitedLog
from snakepit.worker.slot_events import SlotState

__all__ = ["BrokenGate", "OutageMonitor"]

log = logging.getLogger("snakepit.supervisor")


class BrokenGate(Protocol):
    """What the monitor needs of the dispatcher: to refuse calls and to take them again."""

    def mark_broken(self, retry_at: float | None = None) -> None: ...

    def mark_recovered(self) -> None: ...


class _SlotView(Protocol):
    """What the monitor reads of a slot."""

    @property
    def state(self) -> SlotState: ...

    @property
    def retry_at(self) -> float | None: ...


class OutageMonitor:
    """Tracks whether the pool is broken, and reports when it breaks and comes back.

    Args:
        name: the pool's name (in log lines).
        gate: the pool's dispatcher.
        emit: ``emit(event, measurements, **metadata)``, the pool's telemetry.
    """

    def __init__(self, name: str, gate: BrokenGate, emit: Callable[..., None]) -> None:
        self.name = name
        self._gate = gate
        self._emit = emit
        self.slots: Sequence[_SlotView] = ()
        """The pool's slots (set once they exist)."""
        self.broken_since: float | None = None
        """When every slot last became failed, until a worker is ready again."""
        self.crash_log = RateLimitedLog(log)
        """The rate limit the pool's slots share for crash and restart lines."""

    def slot_failed(self, slot: _SlotView) -> None:
        """``slot`` passed its restart intensity; if every slot has, the pool is broken."""
        if not all(s.state is SlotState.FAILED for s in self.slots):
            return
        retry_ats = [s.retry_at for s in self.slots if s.retry_at is not None]
        retry_at = min(retry_ats) if retry_ats else None
        self._gate.mark_broken(retry_at)
        if self.broken_since is not None:
            return  # a slot failed again after its cool-down: still the same outage
        self.broken_since = now = trio.current_time()
        retry_after = None if retry_at is None else retry_at - now
        log.error("pool %s is broken: every slot failed past its restart intensity; %s",
                  self.name, "it stays broken (restart.cooldown is None)"
                  if retry_after is None else f"the first slot tries again in {retry_after:.1f}s")
        measurements: dict[str, Any] = {} if retry_after is None else {
            "retry_after": retry_after}
        self._emit("pool.broken", measurements)

    def slot_retrying(self, slot: _SlotView) -> None:
        """A failed slot's cool-down is over and it starts a worker: let calls wait."""
        self._gate.mark_recovered()

    def worker_ready(self) -> None:
        """A worker is ready: if the pool was broken, it is back."""
        if self.broken_since is None:
            return
        downtime = trio.current_time() - self.broken_since
        self.broken_since = None
        log.warning("pool %s is back after %.1fs: a worker is ready again", self.name,
                    downtime)
        self._emit("pool.recovered", {"downtime": downtime})
