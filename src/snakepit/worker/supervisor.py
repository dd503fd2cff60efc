"""A worker slot: keeps one worker running, restarting it with backoff, within limits.

Restarts follow :class:`~snakepit.config.RestartPolicy`: exponential backoff with
jitter between consecutive failures to start (or deaths before any call), and a restart
intensity (at most ``max_restarts`` within ``period`` seconds) past which the slot is
marked failed rather than looping forever; after ``cooldown`` seconds a failed slot
tries again. A worker killed on purpose (a call that would not stop after its deadline)
is replaced at once and does not count as a failure. Closing the pool cancels any
backoff or cool-down at once.
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
from snakepit.worker.crashlog import RateLimitedLog, describe_exit
from snakepit.worker.run import offered_codecs, run_worker
from snakepit.worker.slot_events import (
    SlotEvent,
    SlotState,
    StartFailed,
    WorkerEnded,
    WorkerReady,
    WorkerRetired,
)
from snakepit.worker.worker import Worker, WorkerState

log = logging.getLogger("snakepit.supervisor")


class Slot:
    """One place in the pool, filled by a succession of worker processes."""

    def __init__(self, config: PoolConfig, index: int, *,
                 release: Callable[[Worker], None],
                 on_ready: Callable[[Worker], None],
                 on_failed: Callable[[Slot], None],
                 on_exit: Callable[[Worker], None] | None = None,
                 on_retry: Callable[[Slot], None] | None = None,
                 launch: Callable[[str], tuple[LaunchSpec, list[str]]] | None = None,
                 spawner: Spawner | None = None,
                 crash_log: RateLimitedLog | None = None) -> None:
        self.config = config
        self.id = f"{config.name}-{index}"
        self.worker: Worker | None = None
        self.state = SlotState.STARTING
        """What the slot does; :attr:`READY` while it has a worker (whose own state
        :attr:`current_state` shows)."""
        self.restarts = 0
        self.calls_served_before = 0
        self.closing = False
        self.supervising = False
        self.stopped = trio.Event()
        self.retry_at: float | None = None
        """When a failed slot's cool-down ends (Trio's clock); ``None`` otherwise."""
        self._release = release
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._on_exit = on_exit
        self._on_retry = on_retry
        """Called when a failed slot's cool-down is over and it starts a worker again."""
        self._launch = launch or _default_launch(config)
        self.spawner = spawner
        """Starts the slot's processes (a fork server's); ``None``: cold."""
        self.crash_log = crash_log or RateLimitedLog(log)
        """Where crashes and restarts are logged; the pool's slots share one."""
        self._random = random.Random()
        self._recent_failures: collections.deque[float] = collections.deque()
        self._pause_scope: trio.CancelScope | None = None
        self._restarted_after_failure = False
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
    def current_state(self) -> SlotState:
        """The state ``stats()`` reports: the slot's, or its worker's while it has one."""
        if self.state is SlotState.READY:
            if self.worker is None:
                return SlotState.DEAD  # exited; the supervisor has not decided yet
            return SlotState.of_worker(self.worker.state)
        return self.state

    def stop(self) -> None:
        """Stop restarting (a backoff or cool-down ends at once); ask the current worker
        to finish and exit."""
        self.closing = True
        if self._pause_scope is not None:
            self._pause_scope.cancel()
        if self.worker is not None:
            self.worker.request_shutdown()

    def _ready(self, worker: Worker) -> None:
        self.worker = worker
        worker.latencies = self.latencies
        self.state = SlotState.READY
        if self.closing:
            worker.request_shutdown()
            return
        if self._restarted_after_failure:
            self._restarted_after_failure = False
            self.crash_log.log(logging.INFO, "worker %s restarted (pid %d), restart %d",
                               self.id, worker.pid, self.restarts)
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
        """Run workers in this slot until the pool closes or the slot fails for good.

        Each worker runs as its own task (an *incarnation*), so that a retiring worker
        can finish its calls while its replacement is already starting. The first
        worker's startup error propagates (the pool fails to open); later ones count as
        failures of the slot.
        """
        self.supervising = True
        send, receive = trio.open_memory_channel[SlotEvent](math.inf)
        consecutive = 0
        try:
            with unwrap_single_error():
                async with trio.open_nursery() as incarnations:
                    for number in itertools.count():
                        if self.closing:
                            break
                        self.state = SlotState.STARTING
                        started_at = trio.current_time()
                        incarnations.start_soon(self._incarnation, number, send)
                        event = await self._next_event(receive, number, task_status)
                        if (isinstance(event, StartFailed)
                                and isinstance(event.error, PlacementDeferred)):
                            # nowhere to put a worker yet (a tainted GPU): wait, no failure
                            self.state = SlotState.WAITING
                            log.warning("slot %s: %s", self.id, event.error)
                            await self._pause(event.error.retry_after)
                            continue
                        if isinstance(event, StartFailed) and number == 0:
                            raise event.error
                        if self.closing:
                            break
                        deliberate = (isinstance(event, WorkerEnded | WorkerRetired)
                                      and event.worker.killed_on_purpose)
                        if deliberate:
                            consecutive = 0
                        else:
                            if not self._crash_loop(event, started_at):
                                consecutive = 0  # healthy until a call or time: no loop
                            consecutive += 1
                            if self._over_intensity():
                                self._report_failure(event, None)
                                if not await self._fail():
                                    return
                                consecutive = 0
                            else:
                                delay = self.backoff(consecutive)
                                self._report_failure(event, delay)
                                self.state = SlotState.RESTARTING
                                await self._pause(delay)
                                if self.closing:
                                    break
                        self.restarts += 1
                        self._restarted_after_failure = not deliberate
                        if telemetry.enabled("worker.restarted"):
                            telemetry.emit("worker.restarted", {"restarts": self.restarts},
                                           {"pool": self.config.name, "worker": self.id,
                                            "on_purpose": deliberate})
        finally:
            if self.state is not SlotState.FAILED:
                self.state = SlotState.STOPPED
            self.worker = None
            self.stopped.set()

    def _crash_loop(self, event: SlotEvent, started_at: float) -> bool:
        """Whether a failure continues a crash loop, so the backoff should grow.

        A worker that could not start, or that died before it was sent any call and
        before ``backoff_max`` passed, is a loop. One that was sent calls (it crashed
        serving one, or after serving some) started healthily: the call or the
        circumstance killed it, not its start, and it is replaced after
        ``backoff_initial`` -- a service with the odd crashing request keeps its full
        capacity instead of sitting in an ever longer backoff.
        """
        if not isinstance(event, WorkerEnded | WorkerRetired):
            return True
        lived = trio.current_time() - started_at
        return event.worker.calls_started == 0 and lived <= self.config.restart.backoff_max

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (a backoff, a cool-down), unless or until :meth:`stop`."""
        with trio.CancelScope() as self._pause_scope:
            if self.closing:
                self._pause_scope.cancel()
            await trio.sleep(seconds)
        self._pause_scope = None

    async def _fail(self) -> bool:
        """Past the restart intensity: mark the slot failed and wait out the cool-down.

        Returns True when the slot should try again (the cool-down is over), False when
        it stays failed (no ``cooldown``) or the pool is closing.
        """
        policy = self.config.restart
        cooldown = policy.cooldown
        self.state = SlotState.FAILED
        now = trio.current_time()
        self.retry_at = None if cooldown is None else now + cooldown
        log.error("slot %s failed: more than %d restarts within %.0fs; %s", self.id,
                  policy.max_restarts, policy.period,
                  "it stays failed (restart.cooldown is None)" if cooldown is None
                  else f"it tries again in {cooldown:g}s (restart.cooldown)")
        if telemetry.enabled("slot.failed"):
            measurements = {"restarts": float(self.restarts)}
            if cooldown is not None:
                measurements["cooldown"] = cooldown
            telemetry.emit("slot.failed", measurements,
                           {"pool": self.config.name, "worker": self.id})
        self._on_failed(self)
        if cooldown is None:
            return False
        await self._pause(cooldown)
        self.retry_at = None
        if self.closing:
            return False
        self._recent_failures.clear()  # a fresh intensity window, as a restarted supervisor
        self.state = SlotState.STARTING
        log.warning("slot %s: cool-down over, starting a worker again", self.id)
        if self._on_retry is not None:
            self._on_retry(self)
        return True

    def _report_failure(self, event: SlotEvent, delay: float | None) -> None:
        """Log a crash or a failed start (rate-limited, with the pool's other slots);
        ``delay``: the backoff before the restart, ``None`` when the slot fails."""
        then = ("past the restart intensity" if delay is None
                else f"restarting in {delay:.2f}s")
        if isinstance(event, StartFailed):
            self.crash_log.log(logging.WARNING, "slot %s: replacement failed to start: %s; %s",
                               self.id, event.error, then)
            return
        worker = cast(WorkerEnded, event).worker
        lost = worker.calls_started - worker.calls_served
        self.crash_log.log(logging.WARNING,
                           "worker %s (pid %d) crashed (%s) after %.1fs, %d call(s) served, "
                           "%d lost; %s", self.id, worker.pid,
                           describe_exit(worker.process.returncode),
                           trio.current_time() - worker.started_at, worker.calls_served, lost,
                           then)

    async def _next_event(self, receive: trio.MemoryReceiveChannel[SlotEvent], number: int,
                          task_status: trio.TaskStatus[None]) -> SlotEvent:
        """Wait for incarnation ``number`` to fail, end or retire (older ones are past)."""
        while True:
            event = await receive.receive()
            if event.number != number:
                continue
            if isinstance(event, WorkerReady):
                if number == 0:
                    task_status.started()
                continue
            return event

    async def _incarnation(self, number: int, send: trio.MemorySendChannel[SlotEvent]) -> None:
        started: list[Worker] = []

        def retired(worker: Worker) -> None:
            self.retiring.add(worker)
            send.send_nowait(WorkerRetired(number, worker))

        def ready(worker: Worker) -> None:
            started.append(worker)
            worker.on_retire = lambda: retired(worker)
            self._ready(worker)
            send.send_nowait(WorkerReady(number, worker))

        try:
            spec, offered = self._launch(self.id)
            worker = await run_worker(self.config, self.id, self._release, ready, spec, offered,
                                      self.spawner)
        except SnakepitError as exc:  # a startup failure, or a ConfigError from an adapter
            if number > 0 and not isinstance(exc, WorkerStartupError):
                # after the pool is up, any launch failure is a failed restart of the slot
                exc = WorkerStartupError(f"slot {self.id} cannot launch a worker: {exc}")
            send.send_nowait(StartFailed(number, exc))
            return
        finally:
            self.retiring.difference_update(started)  # exited (or torn down): unguarded
        self.calls_served_before += worker.calls_served
        if self.worker is worker:
            self.worker = None
        if self._on_exit is not None:
            self._on_exit(worker)
        send.send_nowait(WorkerEnded(number, worker))


def _default_launch(config: PoolConfig) -> Callable[[str], tuple[LaunchSpec, list[str]]]:
    adapter = find_adapter(config)

    def launch(worker_id: str) -> tuple[LaunchSpec, list[str]]:
        return adapter.launch(config, worker_id), offered_codecs(config, adapter.codecs)

    return launch


__all__ = ["Slot", "SlotState", "WorkerState"]
