"""The pool's worker slots: the supervision level of the tree, and what it tells the pool.

Each :class:`~snakepit.worker.supervisor.Slot` keeps one worker running; this part owns
all of them, hands each ready worker's capacity to the dispatcher, tells the session
store and the pool kind when a worker exits, reports outages, and answers questions
about the workers (which is ready, how busy, their statistics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio_util

from snakepit import _realtime as realtime
from snakepit.adapters import LaunchSpec
from snakepit.config import PoolConfig
from snakepit.errors import SessionWorkerLost, SnakepitError
from snakepit.pool.dispatch import Dispatcher
from snakepit.pool.outage import OutageMonitor
from snakepit.pool.stats import WorkerStats, percentiles, resident_memory
from snakepit.process.forkserver import Spawner
from snakepit.worker.supervisor import Slot, SlotState
from snakepit.worker.worker import Worker

Emit = Callable[..., None]


class WorkerSlots:
    """``config.size`` slots, each supervising a succession of worker processes.

    Args:
        config: the pool's configuration.
        dispatcher: receives each ready worker's capacity, and loses it at its exit.
        launch: what to start in a slot (the launcher's).
        emit: the pool's telemetry (``emit(event, measurements, **metadata)``).
        on_exit: told of every worker's exit after the slots have done their part (the
            session store, the pool kind).
    """

    def __init__(self, config: PoolConfig, dispatcher: Dispatcher,
                 launch: Callable[[str], tuple[LaunchSpec, list[str]]], emit: Emit,
                 on_exit: Callable[[Worker], None]) -> None:
        self.config = config
        self._dispatcher = dispatcher
        self._emit = emit
        self._on_exit = on_exit
        self.outage = OutageMonitor(config.name, dispatcher, emit)
        self.slots = [
            Slot(config, index, release=dispatcher.release, on_ready=self._worker_ready,
                 on_failed=self._slot_failed, on_exit=self._worker_exited, launch=launch,
                 on_retry=self.outage.slot_retrying, crash_log=self.outage.crash_log)
            for index in range(config.size)
        ]
        self.outage.slots = self.slots
        self._by_id = {slot.id: slot for slot in self.slots}
        # Bumped whenever a worker becomes ready or a slot fails; wait_ready watches it.
        self._changes = trio_util.AsyncValue(0)
        self.adopt: Callable[[Worker, Callable[[Worker], None]], None] | None = None
        """Given each worker that completed its handshake, and the function that lets
        it serve (its capacity to the dispatcher): it may run set-up on the worker
        first (``pool.setup``, :mod:`snakepit.pool.broadcast`)."""

    # -- the tree ---------------------------------------------------------------------
    def use_spawner(self, spawner: Spawner) -> None:
        """Start every slot's processes with ``spawner`` (a fork server's)."""
        for slot in self.slots:
            slot.spawner = spawner

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every slot in ``nursery``, concurrently; returns once each has its first
        worker ready.

        Raises:
            SnakepitError: the first slot's startup error (``WorkerStartupError``, or a
                ``ConfigError`` at launch); the others may have started.
        """
        errors: list[SnakepitError] = []

        async def start(slot: Slot) -> None:
            try:
                await nursery.start(slot.supervise)
            except SnakepitError as exc:
                errors.append(exc)

        async with trio.open_nursery() as starters:
            for slot in self.slots:
                starters.start_soon(start, slot)
        if errors:
            raise errors[0]

    async def stop(self, grace: float) -> None:
        """Stop restarting, ask every worker to finish and exit; wait up to ``grace``."""
        for slot in self.slots:
            slot.stop()
        with realtime.move_on_after(grace):
            for slot in self.slots:
                if slot.supervising:  # a slot that never started has nothing to stop
                    await slot.stopped.wait()

    # -- what the slots report ----------------------------------------------------------
    def _worker_ready(self, worker: Worker) -> None:
        if self.adopt is not None:
            self.adopt(worker, self._worker_serving)
        else:
            self._worker_serving(worker)

    def _worker_serving(self, worker: Worker) -> None:
        self._dispatcher.add_worker(worker)
        self.outage.worker_ready()
        self._changes.value += 1
        self._emit("worker.ready", {"startup": trio.current_time() - worker.started_at},
                   worker=worker.id, pid=worker.pid)

    def _worker_exited(self, worker: Worker) -> None:
        self._dispatcher.worker_gone(worker, SessionWorkerLost(
            f"worker {worker.id} (pid {worker.pid}), which held the session, died"))
        self._on_exit(worker)
        self._emit("worker.exited", {"uptime": trio.current_time() - worker.started_at},
                   worker=worker.id, pid=worker.pid, exit_code=worker.process.returncode,
                   on_purpose=worker.killed_on_purpose)

    def _slot_failed(self, slot: Slot) -> None:
        self.outage.slot_failed(slot)
        self._changes.value += 1

    def _all_ready(self, _: int = 0) -> bool:
        return all(
            slot.state is SlotState.FAILED or (slot.worker is not None and slot.worker.accepting)
            for slot in self.slots
        )

    async def wait_ready(self) -> None:
        """Wait until every slot has a worker ready for calls (or has failed)."""
        if not self._all_ready():
            await self._changes.wait_value(self._all_ready)
        else:
            await trio.lowlevel.checkpoint()

    # -- the workers ----------------------------------------------------------------------
    def worker(self, slot_id: str) -> Worker | None:
        """The current worker of slot ``slot_id`` (None between processes)."""
        slot = self._by_id.get(slot_id)
        return slot.worker if slot is not None else None

    def workers(self) -> list[Worker]:
        """The current worker of every slot that has one, in slot order."""
        return [slot.worker for slot in self.slots if slot.worker is not None]

    def live_workers(self) -> list[Worker]:
        """Every process that may still run calls: current and retiring workers."""
        return [worker for slot in self.slots for worker in slot.live_workers()]

    @property
    def in_flight(self) -> int:
        """Calls sent to the workers (retiring ones included) and not answered yet."""
        return sum(worker.in_flight for worker in self.live_workers())

    @property
    def restarts(self) -> int:
        return sum(slot.restarts for slot in self.slots)

    def recycle(self, slot_id: str) -> int | None:
        """Retire slot ``slot_id``'s worker; returns its pid, or None when the slot has
        no worker taking calls.

        Raises:
            KeyError: no slot ``slot_id``.
        """
        worker = self._by_id[slot_id].worker
        if worker is None or not worker.accepting:
            return None
        worker.retire("recycled by an operator")
        return worker.pid

    def stats(self, info: Callable[[str], dict[str, Any]]) -> tuple[WorkerStats, ...]:
        """Every slot's :class:`WorkerStats`; ``info(slot_id)``: the pool kind's facts."""
        return tuple(self._slot_stats(slot, info(slot.id)) for slot in self.slots)

    @staticmethod
    def _slot_stats(slot: Slot, info: dict[str, Any]) -> WorkerStats:
        worker = slot.worker
        p50, p99 = percentiles(slot.latencies, (0.50, 0.99))
        return WorkerStats(
            id=slot.id,
            pid=worker.pid if worker is not None else None,
            state=slot.current_state,
            calls_served=slot.calls_served,
            in_flight=sum(live.in_flight for live in slot.live_workers()),
            restarts=slot.restarts,
            info=info,
            latency_p50=p50,
            latency_p99=p99,
            rss=resident_memory(worker.pid) if worker is not None else None,
        )
