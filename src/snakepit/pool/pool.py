"""The pool: the root of the supervision tree and the public call API.

::

    open_pool() -- nursery: the pool
      +- Slot 0 .. Slot N-1 (supervise: restart with backoff, intensity limit)
      |     +- run_worker: OS process (own process group), reader, stderr pump
      +- Dispatcher: FIFO hand-out of worker capacity, bounded wait queue
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import trio
import trio_util

from snakepit.config import PoolConfig
from snakepit.errors import (
    ConfigError,
    PoolClosed,
    PoolSaturated,
    QueueTimeout,
    WorkerCrashed,
    WorkerStartupError,
    WorkerTimeout,
)
from snakepit.pool.dispatch import Dispatcher
from snakepit.pool.stats import PoolStats, WorkerStats
from snakepit.pool.stream import ChunkStream
from snakepit.worker.calls import ProgressCallback
from snakepit.worker.supervisor import Slot
from snakepit.worker.worker import Worker

__all__ = ["Pool", "open_pool"]


class Pool:
    """A running pool of workers. Create it with :func:`open_pool`."""

    def __init__(self, config: PoolConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self._nursery = nursery
        self._dispatcher = Dispatcher(config.max_queue, config.pipeline_depth)
        self._slots = [
            Slot(config, index, release=self._dispatcher.release,
                 on_ready=self._worker_ready, on_failed=self._slot_failed)
            for index in range(config.size)
        ]
        # Bumped whenever a worker becomes ready or a slot fails; wait_ready watches it.
        self._changes = trio_util.AsyncValue(0)
        self._closed = False
        self._counts = dict.fromkeys(
            ("calls", "succeeded", "failed", "timeouts", "crashes", "rejected"), 0
        )

    @property
    def name(self) -> str:
        return self.config.name

    # -- life cycle ------------------------------------------------------------------
    async def _start(self) -> None:
        """Start every slot concurrently; the first startup error wins."""
        errors: list[WorkerStartupError] = []

        async def start(slot: Slot) -> None:
            try:
                await self._nursery.start(slot.supervise)
            except WorkerStartupError as exc:
                errors.append(exc)

        async with trio.open_nursery() as starters:
            for slot in self._slots:
                starters.start_soon(start, slot)
        if errors:
            raise errors[0]

    def _worker_ready(self, worker: Worker) -> None:
        self._dispatcher.add_worker(worker)
        self._changes.value += 1

    def _slot_failed(self, slot: Slot) -> None:
        if all(s.state == "failed" for s in self._slots):
            self._dispatcher.mark_broken()
        self._changes.value += 1

    def _all_ready(self, _: int = 0) -> bool:
        return all(
            slot.state == "failed" or (slot.worker is not None and slot.worker.accepting)
            for slot in self._slots
        )

    async def wait_ready(self) -> None:
        """Wait until every slot has a worker ready for calls (or has failed).

        Useful after a crash or a kill, to know the replacements are serving.
        """
        if not self._all_ready():
            await self._changes.wait_value(self._all_ready)
        else:
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Shut down: refuse new calls, let workers finish and exit, then the ladder.

        Bounded by ``shutdown_grace`` plus the SIGTERM/SIGKILL steps of the ladder.
        """
        if self._closed:
            return
        self._closed = True
        self._dispatcher.close()
        for slot in self._slots:
            slot.stop()
        with trio.move_on_after(self.config.shutdown_grace):
            for slot in self._slots:
                await slot.stopped.wait()
        self._nursery.cancel_scope.cancel()

    # -- calls -------------------------------------------------------------------------
    def _deadline(self, timeout: float | None) -> float:
        if timeout is None:
            timeout = self.config.call_timeout
        if timeout is None:
            return math.inf
        if not timeout > 0:
            raise ConfigError([f"timeout: must be a number > 0 (got {timeout!r})"])
        return trio.current_time() + timeout

    async def _acquire(self, deadline: float) -> Worker:
        if self._closed:
            raise PoolClosed("the pool is closed")
        worker = self._dispatcher.try_acquire()
        if worker is not None:
            return worker
        if math.isinf(deadline):
            return await self._dispatcher.acquire()
        with trio.CancelScope(deadline=deadline):
            worker = await self._dispatcher.acquire()
            if trio.current_time() < deadline:
                return worker
            self._dispatcher.release(worker)  # handed over just as the deadline passed
        raise QueueTimeout("the call's deadline passed while it waited for a worker")

    def _count_failure(self, exc: BaseException) -> None:
        counts = self._counts
        counts["failed"] += 1
        if isinstance(exc, WorkerTimeout | QueueTimeout):
            counts["timeouts"] += 1
        elif isinstance(exc, WorkerCrashed):
            counts["crashes"] += 1
        elif isinstance(exc, PoolSaturated):
            counts["rejected"] += 1

    @contextmanager
    def _count(self) -> Iterator[None]:
        self._counts["calls"] += 1
        try:
            yield
        except BaseException as exc:
            self._count_failure(exc)
            raise
        self._counts["succeeded"] += 1

    async def execute(self, command: str, args: Any = None, *, timeout: float | None = None,
                      on_progress: ProgressCallback | None = None) -> Any:
        """Run ``command`` with ``args`` on a free worker and return its result.

        Args:
            command: name of a command the workers' handler serves.
            args: any value the codec can encode (usually a dict).
            timeout: seconds for the whole call, waiting for a worker included
                (default: ``config.call_timeout``). An enclosing Trio cancel scope
                applies too; the tighter one wins.
            on_progress: called as ``on_progress(done, total, message)`` when the
                handler reports progress.

        Raises:
            QueueTimeout: the deadline passed before a worker was free.
            WorkerTimeout: the deadline passed while the worker ran the call.
            PoolSaturated: ``max_queue`` calls already wait.
            RemoteError: the handler raised (``UnknownCommand`` for a bad name).
            WorkerCrashed: the worker died with the call in flight.
            PayloadError: the arguments or the result cannot travel.
            PoolClosed: the pool is closing.
        """
        # The counting is inlined (not the _count context manager) on this hot path.
        counts = self._counts
        counts["calls"] += 1
        try:
            deadline = self._deadline(timeout)
            worker = await self._acquire(deadline)
            started = trio.current_time()
            result = await worker.call(command, args, deadline=deadline,
                                       on_progress=on_progress)
        except BaseException as exc:
            self._count_failure(exc)
            raise
        counts["succeeded"] += 1
        self._dispatcher.record_service_time(trio.current_time() - started)
        return result

    @asynccontextmanager
    async def stream(self, command: str, args: Any = None, *, timeout: float | None = None,
                     window: int | None = None) -> AsyncIterator[ChunkStream]:
        """Run a streaming command; iterate the context's value for its chunks.

        ::

            async with pool.stream("count", {"n": 10}) as chunks:
                async for chunk in chunks:
                    ...

        ``window`` (default ``config.stream_window``) bounds how many chunks may be in
        flight: the worker stops producing until the consumer takes some. Leaving the
        block early cancels the stream in the worker (its generator is closed).
        """
        with self._count():
            deadline = self._deadline(timeout)
            worker = await self._acquire(deadline)
            stream = ChunkStream(worker, command, args, deadline,
                                 window or self.config.stream_window)
            try:
                yield stream
            finally:
                stream.close()

    # -- introspection -------------------------------------------------------------------
    def stats(self) -> PoolStats:
        """A snapshot of the pool: per-worker state and the pool's totals."""
        workers = tuple(
            WorkerStats(
                id=slot.id,
                pid=slot.worker.pid if slot.worker is not None else None,
                state=slot.current_state,
                calls_served=slot.calls_served,
                in_flight=slot.worker.in_flight if slot.worker is not None else 0,
                restarts=slot.restarts,
            )
            for slot in self._slots
        )
        return PoolStats(
            name=self.config.name,
            workers=workers,
            queue_depth=self._dispatcher.queue_depth,
            in_flight=sum(w.in_flight for w in workers),
            restarts=sum(w.restarts for w in workers),
            **self._counts,
        )

    def workers(self) -> list[Worker]:
        """The live worker handles, in slot order (for tests and operators)."""
        return [slot.worker for slot in self._slots if slot.worker is not None]


@asynccontextmanager
async def open_pool(config: PoolConfig | None = None, /, **overrides: Any
                    ) -> AsyncIterator[Pool]:
    """Start a pool, yield it, and shut it down on the way out.

    All workers start concurrently; the block is entered once every one has completed
    its handshake. Leaving the block -- normally, by exception or by cancellation --
    shuts every worker down (shutdown frame, grace, SIGTERM, SIGKILL to its process
    group) and waits for them: no process outlives the block.

    Args:
        config: the pool's configuration (default: ``PoolConfig()``).
        **overrides: fields to replace in ``config`` (``size=2``).

    Raises:
        WorkerStartupError: a worker could not start; no worker is left running.
        ConfigError: an override is invalid.
    """
    if config is None:
        config = PoolConfig(**overrides)
    elif overrides:
        config = attrs.evolve(config, **overrides)
    with _single_errors():
        async with trio.open_nursery() as nursery:
            pool = Pool(config, nursery)
            try:
                await pool._start()
                yield pool
            finally:
                with trio.CancelScope(shield=True):
                    await pool.aclose()


@contextmanager
def _single_errors() -> Iterator[None]:
    """Raise a lone exception out of the pool's nursery as itself, not in a group.

    The nursery is an implementation detail; callers expect ``WorkerStartupError``
    or their own exception from the block, as if no nursery were there.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            inner = group.exceptions[0]
            if not isinstance(inner, BaseExceptionGroup):
                raise inner from group.__cause__
            group = inner
        raise
