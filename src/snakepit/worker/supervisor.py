"""A worker slot: keeps one worker running, restarting it with backoff, within limits.

Restarts follow :class:`~snakepit.config.RestartPolicy`: exponential backoff with
jitter between consecutive failures, and a restart intensity (at most
``max_restarts`` within ``period`` seconds) past which the slot is marked failed
rather than looping forever. A worker killed on purpose (a call that would not stop
after its deadline) is replaced at once and does not count as a failure.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Callable

import trio

from snakepit import telemetry
from snakepit.config import PoolConfig
from snakepit.errors import WorkerStartupError
from snakepit.worker.run import run_worker
from snakepit.worker.worker import Worker, WorkerState

log = logging.getLogger("snakepit.supervisor")


class Slot:
    """One place in the pool, filled by a succession of worker processes."""

    def __init__(self, config: PoolConfig, index: int, *,
                 release: Callable[[Worker], None],
                 on_ready: Callable[[Worker], None],
                 on_failed: Callable[[Slot], None],
                 on_exit: Callable[[Worker], None] | None = None) -> None:
        self.config = config
        self.id = f"{config.name}-{index}"
        self.worker: Worker | None = None
        self.state = "starting"
        self.restarts = 0
        self.calls_served_before = 0
        self.closing = False
        self.stopped = trio.Event()
        self._release = release
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._on_exit = on_exit
        self._random = random.Random()
        self._recent_failures: collections.deque[float] = collections.deque()

    @property
    def calls_served(self) -> int:
        current = self.worker.calls_served if self.worker is not None else 0
        return self.calls_served_before + current

    @property
    def current_state(self) -> str:
        if self.worker is not None and self.state == "running":
            return self.worker.state.value
        return self.state

    def stop(self) -> None:
        """Stop restarting; ask the current worker to finish and exit."""
        self.closing = True
        if self.worker is not None:
            self.worker.request_shutdown()

    def _ready(self, worker: Worker) -> None:
        self.worker = worker
        self.state = "running"
        if self.closing:
            worker.request_shutdown()
            return
        self._on_ready(worker)

    def backoff(self, consecutive: int) -> float:
        policy = self.config.restart
        delay = min(policy.backoff_max, policy.backoff_initial * 2 ** max(0, consecutive - 1))
        return float(delay * self._random.uniform(1 - policy.jitter, 1 + policy.jitter))

    def _over_intensity(self) -> bool:
        """Record a failure now; True if the restart intensity is exceeded."""
        policy = self.config.restart
        now = trio.current_time()
        failures = self._recent_failures
        failures.append(now)
        while failures and failures[0] <= now - policy.period:
            failures.popleft()
        return len(failures) > policy.max_restarts

    async def supervise(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                        ) -> None:
        """Run workers in this slot until the pool closes or the slot fails.

        The first worker's startup error propagates (the pool fails to open); later
        ones count as failures of the slot.
        """
        consecutive = 0
        first = True
        try:
            while not self.closing:
                self.state = "starting"
                started_at = trio.current_time()
                try:
                    worker = await run_worker(self.config, self.id, self._release,
                                              self._first_ready(task_status) if first
                                              else self._ready)
                except WorkerStartupError as exc:
                    if first:
                        raise
                    log.error("slot %s: replacement worker failed to start: %s", self.id, exc)
                    deliberate = False
                else:
                    self.calls_served_before += worker.calls_served
                    self.worker = None
                    deliberate = worker.killed_on_purpose
                    if self._on_exit is not None:
                        self._on_exit(worker)
                first = False
                if self.closing:
                    break
                if deliberate:
                    consecutive = 0
                else:
                    if trio.current_time() - started_at > self.config.restart.backoff_max:
                        consecutive = 0  # it ran healthily for a while: restart quickly
                    consecutive += 1
                    if self._over_intensity():
                        log.error("slot %s failed: more than %d restarts within %.0fs",
                                  self.id, self.config.restart.max_restarts,
                                  self.config.restart.period)
                        self.state = "failed"
                        self._on_failed(self)
                        return
                    self.state = "restarting"
                    await trio.sleep(self.backoff(consecutive))
                self.restarts += 1
                if telemetry.enabled("worker.restarted"):
                    telemetry.emit("worker.restarted", {"restarts": self.restarts},
                                   {"pool": self.config.name, "worker": self.id,
                                    "on_purpose": deliberate})
        finally:
            if self.state != "failed":
                self.state = "stopped"
            self.worker = None
            self.stopped.set()

    def _first_ready(self, task_status: trio.TaskStatus[None]) -> Callable[[Worker], None]:
        def ready(worker: Worker) -> None:
            self._ready(worker)
            task_status.started()

        return ready


__all__ = ["Slot", "WorkerState"]
