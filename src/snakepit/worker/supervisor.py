"""A worker slot: keeps one worker running, restarting it with backoff, within limits.

Restarts follow :class:`~snakepit.config.RestartPolicy`: exponential backoff with
jitter between consecutive failures, and a restart intensity (at most
``max_restarts`` within ``period`` seconds) past which the slot is marked failed
rather than looping forever. A worker killed on purpose (a call that would not stop
after its deadline) is replaced at once and does not count as a failure.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import random
from collections.abc import Callable
from typing import cast

import trio

from snakepit import telemetry
from snakepit.adapters import LaunchSpec, find_adapter
from snakepit.config import PoolConfig
from snakepit.errors import PlacementDeferred, SnakepitError, WorkerStartupError
from snakepit.pool.nursery import unwrap_single_error
from snakepit.process.forkserver import Spawner
from snakepit.worker.run import offered_codecs, run_worker
from snakepit.worker.worker import Worker, WorkerState

log = logging.getLogger("snakepit.supervisor")


class Slot:
    """One place in the pool, filled by a succession of worker processes."""

    def __init__(self, config: PoolConfig, index: int, *,
                 release: Callable[[Worker], None],
                 on_ready: Callable[[Worker], None],
                 on_failed: Callable[[Slot], None],
                 on_exit: Callable[[Worker], None] | None = None,
                 launch: Callable[[str], tuple[LaunchSpec, list[str]]] | None = None,
                 spawner: Spawner | None = None) -> None:
        self.config = config
        self.id = f"{config.name}-{index}"
        self.worker: Worker | None = None
        self.state = "starting"
        self.restarts = 0
        self.calls_served_before = 0
        self.closing = False
        self.supervising = False
        self.stopped = trio.Event()
        self._release = release
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._on_exit = on_exit
        self._launch = launch or _default_launch(config)
        self.spawner = spawner
        """Starts the slot's processes (a fork server's); ``None``: cold."""
        self._random = random.Random()
        self._recent_failures: collections.deque[float] = collections.deque()
        self.latencies: collections.deque[float] = collections.deque(maxlen=512)
        """Run times of the slot's recent successful calls, across its workers."""
        self.retiring: set[Worker] = set()
        """Workers of this slot that retired and still finish their calls while the
        next one takes their place; the watchdogs guard them until they exit."""

    @property
    def calls_served(self) -> int:
        current = self.worker.calls_served if self.worker is not None else 0
        return self.calls_served_before + current

    def live_workers(self) -> list[Worker]:
        """Every process of this slot that may still run calls: the current worker and
        the retiring ones."""
        live = [w for w in self.retiring if w is not self.worker]
        return live if self.worker is None else [self.worker, *live]

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
        worker.latencies = self.latencies
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

        Each worker runs as its own task (an *incarnation*), so that a retiring worker
        can finish its calls while its replacement is already starting. The first
        worker's startup error propagates (the pool fails to open); later ones count as
        failures of the slot.
        """
        self.supervising = True
        send, receive = trio.open_memory_channel[tuple[int, str, object]](math.inf)
        consecutive = 0
        try:
            with unwrap_single_error():
                async with trio.open_nursery() as incarnations:
                    for number in itertools.count():
                        if self.closing:
                            break
                        self.state = "starting"
                        started_at = trio.current_time()
                        incarnations.start_soon(self._incarnation, number, send)
                        event, value = await self._next_event(receive, number, task_status)
                        if isinstance(value, PlacementDeferred):
                            # nowhere to put a worker yet (a tainted GPU): wait, no failure
                            self.state = "waiting"
                            log.warning("slot %s: %s", self.id, value)
                            await trio.sleep(value.retry_after)
                            continue
                        if event == "error":
                            if number == 0:
                                raise value  # type: ignore[misc]
                            log.error("slot %s: replacement failed to start: %s", self.id, value)
                            deliberate = False
                        else:  # "ended", or "retired": it drains while the next one starts
                            deliberate = cast(Worker, value).killed_on_purpose
                        if self.closing:
                            break
                        if deliberate:
                            consecutive = 0
                        else:
                            if trio.current_time() - started_at > self.config.restart.backoff_max:
                                consecutive = 0  # it ran healthily a while: restart quickly
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

    async def _next_event(self, receive: trio.MemoryReceiveChannel[tuple[int, str, object]],
                          number: int, task_status: trio.TaskStatus[None]
                          ) -> tuple[str, object]:
        """Wait for incarnation ``number`` to fail, end or retire (older ones are past)."""
        while True:
            sender, event, value = await receive.receive()
            if sender != number:
                continue
            if event == "ready":
                if number == 0:
                    task_status.started()
                continue
            return event, value

    async def _incarnation(self, number: int,
                           send: trio.MemorySendChannel[tuple[int, str, object]]) -> None:
        started: list[Worker] = []

        def retired(worker: Worker) -> None:
            self.retiring.add(worker)
            send.send_nowait((number, "retired", worker))

        def ready(worker: Worker) -> None:
            started.append(worker)
            worker.on_retire = lambda: retired(worker)
            self._ready(worker)
            send.send_nowait((number, "ready", worker))

        try:
            spec, offered = self._launch(self.id)
            worker = await run_worker(self.config, self.id, self._release, ready, spec, offered,
                                      self.spawner)
        except SnakepitError as exc:  # a startup failure, or a ConfigError from an adapter
            if number > 0 and not isinstance(exc, WorkerStartupError):
                # after the pool is up, any launch failure is a failed restart of the slot
                exc = WorkerStartupError(f"slot {self.id} cannot launch a worker: {exc}")
            send.send_nowait((number, "error", exc))
            return
        finally:
            self.retiring.difference_update(started)  # exited (or torn down): unguarded
        self.calls_served_before += worker.calls_served
        if self.worker is worker:
            self.worker = None
        if self._on_exit is not None:
            self._on_exit(worker)
        send.send_nowait((number, "ended", worker))


def _default_launch(config: PoolConfig) -> Callable[[str], tuple[LaunchSpec, list[str]]]:
    adapter = find_adapter(config)

    def launch(worker_id: str) -> tuple[LaunchSpec, list[str]]:
        return adapter.launch(config, worker_id), offered_codecs(config, adapter.codecs)

    return launch


__all__ = ["Slot", "WorkerState"]
