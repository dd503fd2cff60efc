"""The pool: the root of the supervision tree and the public call API.

::

    open_pool() -- nursery: the pool
      +- Slot 0 .. Slot N-1 (supervise: restart with backoff, intensity limit)
      |     +- run_worker: OS process (own process group), reader, stderr pump
      +- health monitor (pings idle workers, memory limit)
      +- session sweeper (TTL)
      +- Dispatcher: FIFO hand-out of worker capacity, bounded wait queue
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio
import trio_util

from snakepit import telemetry
from snakepit.adapters import LaunchSpec, find_adapter
from snakepit.config import PoolConfig
from snakepit.control.server import control_enabled, serve_control
from snakepit.control.snapshot import EventLog
from snakepit.errors import (
    ConfigError,
    SessionWorkerLost,
    SnakepitError,
)
from snakepit.kinds import KindRuntime, apply_kind, find_kind
from snakepit.plugins import plugin_manager
from snakepit.pool.calls import Attempt, CallPath
from snakepit.pool.dispatch import Dispatcher
from snakepit.pool.dynamic import DynamicCalls
from snakepit.pool.health import monitor_health, resident_memory, watch_heartbeats
from snakepit.pool.mapping import MapResults, open_map
from snakepit.pool.nursery import unwrap_single_error
from snakepit.pool.outage import OutageMonitor
from snakepit.pool.session import SessionAffinity, SessionHandle, open_session
from snakepit.pool.stats import CallCounters, PoolStats, WorkerStats, percentiles
from snakepit.pool.stream import ChunkStream
from snakepit.pool.warm import check_warm_start, open_fork_server
from snakepit.process.forkserver import ForkServer
from snakepit.process.registry import reap_orphans
from snakepit.resilience.breaker import CircuitBreaker
from snakepit.sessions.store import AffinityMode, Session
from snakepit.worker.calls import ProgressCallback
from snakepit.worker.run import offered_codecs, registry
from snakepit.worker.supervisor import Slot, SlotState
from snakepit.worker.worker import Worker

__all__ = ["Pool", "open_pool"]


class Pool(CallPath, DynamicCalls):
    """A running pool of workers. Create it with :func:`open_pool`."""

    def __init__(self, config: PoolConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self._nursery = nursery
        self._dispatcher = Dispatcher(config.max_queue, config.pipeline_depth)
        self._adapter = find_adapter(config)
        if config.codec != "auto" and config.codec not in self._adapter.codecs:
            raise ConfigError([f"codec: the {self._adapter.name} adapter's workers speak "
                               f"{', '.join(self._adapter.codecs)}, not {config.codec}"])
        check_warm_start(config, self._adapter)
        self._fork_server: ForkServer | None = None
        self._kind: KindRuntime | None = None
        self._outage = OutageMonitor(config.name, self._dispatcher, self._emit)
        self._slots = [
            Slot(config, index, release=self._dispatcher.release,
                 on_ready=self._worker_ready, on_failed=self._slot_failed,
                 on_exit=self._worker_exited, launch=self._launch,
                 on_retry=self._outage.slot_retrying, crash_log=self._outage.crash_log)
            for index in range(config.size)
        ]
        self._outage.slots = self._slots
        self._slots_by_id = {slot.id: slot for slot in self._slots}
        # Bumped whenever a worker becomes ready or a slot fails; wait_ready watches it.
        self._changes = trio_util.AsyncValue(0)
        self._closed = False
        self.draining = False
        """Set by :meth:`drain`: new calls are refused with :class:`PoolDraining`."""
        self._counters = CallCounters()
        self._breaker = (None if config.circuit_breaker is None else CircuitBreaker(
            config.circuit_breaker, trio.current_time,
            lambda circuit, state: self._emit("circuit.changed", {}, circuit=circuit,
                                              state=state)))
        self._affinity = SessionAffinity(self)
        self.sessions = self._affinity.store
        """The pool's :class:`~snakepit.sessions.store.SessionStore`."""

    @property
    def name(self) -> str:
        return self.config.name

    def _emit(self, event: str, measurements: dict[str, float], **metadata: Any) -> None:
        if telemetry.enabled(event):
            telemetry.emit(event, measurements, {"pool": self.config.name, **metadata})

    # -- life cycle ------------------------------------------------------------------
    async def _start(self) -> None:
        """Start every slot concurrently; the first startup error wins."""
        errors: list[SnakepitError] = []
        started = trio.current_time()
        await trio.to_thread.run_sync(reap_orphans, registry(self.config).state_dir)
        prepare = getattr(self._adapter, "prepare", None)
        if prepare is not None:  # slow set-up (installing a runtime's deps), off the loop
            await prepare(self.config)
        self._kind = find_kind(self.config).prepare(self.config)
        run = getattr(self._kind, "run", None)
        if run is not None:  # the kind's background work (device readings), for our life
            await self._nursery.start(run)
        if self.config.warm_start:
            self._fork_server = await open_fork_server(self.config, self._adapter,
                                                       self._nursery)
            if self._fork_server is not None:
                for slot in self._slots:
                    slot.spawner = self._fork_server.spawn

        async def start(slot: Slot) -> None:
            try:
                await self._nursery.start(slot.supervise)
            except SnakepitError as exc:  # WorkerStartupError, or a ConfigError at launch
                errors.append(exc)

        async with trio.open_nursery() as starters:
            for slot in self._slots:
                starters.start_soon(start, slot)
        if errors:
            raise errors[0]
        self._nursery.start_soon(self._affinity.sweep)
        if self.config.health_check_interval is not None:
            self._nursery.start_soon(monitor_health, self)
        if self.config.heartbeat_interval is not None:
            self._nursery.start_soon(watch_heartbeats, self)
        measurements = {"size": self.config.size, "duration": trio.current_time() - started}
        if self._fork_server is not None and self._fork_server.template_startup is not None:
            measurements["template_startup"] = self._fork_server.template_startup
        self._emit("pool.started", measurements)

    def _launch(self, worker_id: str) -> tuple[LaunchSpec, list[str]]:
        """What to start in slot ``worker_id``: the adapter's command, with the pool
        kind's environment for this slot (a GPU, say), and the codecs to offer."""
        spec = self._adapter.launch(self.config, worker_id)
        if self._kind is not None:
            spec = apply_kind(self._kind, spec, worker_id)
        return spec, offered_codecs(self.config, self._adapter.codecs)

    def _worker_ready(self, worker: Worker) -> None:
        self._dispatcher.add_worker(worker)
        self._outage.worker_ready()
        self._changes.value += 1
        self._emit("worker.ready", {"startup": trio.current_time() - worker.started_at},
                   worker=worker.id, pid=worker.pid)

    def _worker_exited(self, worker: Worker) -> None:
        self._dispatcher.worker_gone(worker, SessionWorkerLost(
            f"worker {worker.id} (pid {worker.pid}), which held the session, died"))
        self.sessions.worker_lost(worker.id, worker.pid)
        if self._kind is not None:
            self._kind.worker_exited(worker.id, worker.pid, worker.process.returncode,
                                     "\n".join(worker.stderr.tail))
        self._emit("worker.exited", {"uptime": trio.current_time() - worker.started_at},
                   worker=worker.id, pid=worker.pid, exit_code=worker.process.returncode,
                   on_purpose=worker.killed_on_purpose)

    def _slot_failed(self, slot: Slot) -> None:
        self._outage.slot_failed(slot)
        self._changes.value += 1

    def _all_ready(self, _: int = 0) -> bool:
        return all(
            slot.state is SlotState.FAILED or (slot.worker is not None and slot.worker.accepting)
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
                if slot.supervising:  # a slot that never started has nothing to stop
                    await slot.stopped.wait()
        self._nursery.cancel_scope.cancel()

    @property
    def effective_pipeline_depth(self) -> int:
        """Calls each unit of a worker's concurrency may hold now (running + waiting in
        its pipe): ``pipeline_depth`` while handlers are quick, fewer as they slow down
        (about a millisecond of measured service time may wait in a pipe)."""
        return self._dispatcher._depth()

    @property
    def in_flight(self) -> int:
        """Calls sent to the pool's workers (retiring ones included) and not answered
        yet: ``stats().in_flight`` without building the rest of the snapshot."""
        return sum(worker.in_flight for slot in self._slots for worker in slot.live_workers())

    # -- operator actions --------------------------------------------------------------
    def drain(self) -> None:
        """Refuse new calls with :class:`PoolDraining`; calls already waiting or running
        finish. :meth:`resume` takes calls again. (The control socket's ``drain``.)"""
        if not self.draining:
            self.draining = True
            self._emit("pool.drained", {"in_flight": self.in_flight})

    def resume(self) -> None:
        """Take new calls again after :meth:`drain`."""
        if self.draining:
            self.draining = False
            self._emit("pool.resumed", {})

    def recycle(self, worker_id: str) -> int | None:
        """Retire slot ``worker_id``'s worker as ``max_calls`` would: it takes no new
        calls, finishes those it has and exits while its replacement starts.

        Returns the pid of the retiring process, or ``None`` when the slot has no worker
        taking calls (starting, restarting, already retiring).

        Raises:
            KeyError: the pool has no slot ``worker_id``.
        """
        slot = self._slots_by_id[worker_id]
        worker = slot.worker
        if worker is None or not worker.accepting:
            return None
        worker.retire("recycled by an operator")
        return worker.pid

    # -- calls -------------------------------------------------------------------------
    async def execute(self, command: str, args: Any = None, *, timeout: float | None = None,
                      on_progress: ProgressCallback | None = None,
                      idempotent: bool = False) -> Any:
        """Run ``command`` with ``args`` on a free worker and return its result.

        Args:
            command: name of a command the workers' handler serves.
            args: any value the codec can encode (usually a dict).
            timeout: seconds for the whole call, waiting for a worker included
                (default: ``config.call_timeout``). An enclosing Trio cancel scope
                applies too; the tighter one wins.
            on_progress: called as ``on_progress(done, total, message)`` when the
                handler reports progress.
            idempotent: running the call twice is harmless, so with a ``retry`` policy
                a ``WorkerCrashed`` may be retried too.

        Raises:
            QueueTimeout: the deadline passed before a worker was free.
            WorkerTimeout: the deadline passed while the worker ran the call.
            PoolSaturated: ``max_queue`` calls already wait.
            RemoteError: the handler raised (``UnknownCommand`` for a bad name).
            WorkerCrashed: the worker died with the call in flight.
            PayloadError: the arguments or the result cannot travel.
            PoolClosed: the pool is closing.
        """
        return await self._run(command, args, timeout, on_progress, None, idempotent)

    async def execute_in_session(self, session_id: str, command: str, args: Any = None, *,
                                 timeout: float | None = None,
                                 on_progress: ProgressCallback | None = None,
                                 idempotent: bool = False) -> Any:
        """Run ``command`` in a session: on the worker holding the session's state.

        The session's first call binds it to the worker that runs it. Later calls go
        there: in ``prefer`` mode to another worker when that one is busy or gone, in
        ``strict`` mode they wait for it.

        Raises:
            SessionNotFound: no live session ``session_id``.
            SessionWorkerLost: strict mode, and the bound worker died (its state with
                it); the session's next call binds afresh.
            SnakepitError: anything :meth:`execute` raises.
        """
        return await self._run(command, args, timeout, on_progress, session_id, idempotent)

    @asynccontextmanager
    async def stream(self, command: str, args: Any = None, *, timeout: float | None = None,
                     window: int | None = None, session_id: str | None = None
                     ) -> AsyncIterator[ChunkStream]:
        """Run a streaming command; iterate the context's value for its chunks.

        ::

            async with pool.stream("count", {"n": 10}) as chunks:
                async for chunk in chunks:
                    ...

        ``window`` (default ``config.stream_window``) bounds how many chunks may be in
        flight: the worker stops producing until the consumer takes some. Leaving the
        block early cancels the stream in the worker (its generator is closed), and so
        does taking no chunk for ``config.stream_idle_timeout`` seconds: the next read
        then raises :class:`StreamIdleTimeout`.
        ``session_id`` runs it in a session, as :meth:`execute_in_session` does.
        """
        call_id, submitted = self._call_started(command, stream=True)
        attempt = Attempt(submitted)
        session: Session | None = None
        try:
            self._check_open()
            deadline = self._deadline(timeout)
            if session_id is None:
                worker = await self._acquire(deadline)
            else:
                # In use for the stream's whole life, as a session is for a call's run:
                # its TTL cannot expire (and drop the worker's state) mid-stream.
                session = self.sessions.touch(session_id)
                session.in_use += 1
                worker = await self._affinity.acquire(session, deadline)
            stream = ChunkStream(worker, command, args, deadline,
                                 window or self.config.stream_window, session_id,
                                 movable=session is None or session.mode != "strict")
            attempt.call = stream._pending
            stream.watch_idle(self._nursery, self.config.stream_idle_timeout)
            try:
                yield stream
            finally:
                stream.close()
        except BaseException as exc:
            self._call_failed(exc, command, call_id, submitted, attempt, stream=True)
            raise
        finally:
            if session is not None:
                session.in_use -= 1
                session.last_used = trio.current_time()  # its TTL counts from here
        self._call_succeeded(command, call_id, submitted, attempt,
                             measurements={"chunks": stream.received}, stream=True)

    def map(self, command: str, items: Iterable[Any] | AsyncIterable[Any], *,
            chunksize: int | None = None, timeout: float | None = 60.0,
            return_exceptions: bool = False, session_id: str | None = None
            ) -> AbstractAsyncContextManager[MapResults]:
        """Run ``command`` once per item, many items per frame; results in input order.

        ::

            async with pool.map("score", rows) as results:
                async for r in results:
                    ...

        ``items`` (any iterable or async iterable) is consumed lazily, a bounded number
        of chunks ahead of the consumer. ``chunksize=None`` aims at about a millisecond
        of work per chunk. ``timeout`` is one deadline for the whole map. An item that
        raised raises its :class:`RemoteError` at its position, or with
        ``return_exceptions`` is yielded in its place. Leaving the block early (or a
        cancelled caller) stops the work not yet done. See docs/performance.md and
        :mod:`snakepit.pool.mapping`.

        Raises:
            QueueTimeout, WorkerTimeout: the deadline passed.
            RemoteError, WorkerCrashed, PayloadError: an item's (or its chunk's) error,
                unless ``return_exceptions``.
            PoolClosed, PoolSaturated: the pool takes no more work.
            ConfigError: a bad ``chunksize`` or ``timeout``.
        """
        return open_map(self, command, items, chunksize=chunksize, timeout=timeout,
                        return_exceptions=return_exceptions, session_id=session_id)

    # -- sessions --------------------------------------------------------------------------
    def slot_worker(self, slot_id: str) -> Worker | None:
        """The current worker of slot ``slot_id`` (None between processes)."""
        slot = self._slots_by_id.get(slot_id)
        return slot.worker if slot is not None else None

    def session(self, *, ttl: float | None = None, mode: AffinityMode = "prefer",
                metadata: dict[str, Any] | None = None, session_id: str | None = None
                ) -> Any:
        """Open a session for the block: ``async with pool.session() as s:``.

        Args:
            ttl: seconds of disuse after which the session expires (default
                ``config.session_ttl``).
            mode: ``"prefer"`` or ``"strict"`` affinity (see :meth:`execute_in_session`).
            metadata: free-form data kept with the session in the store.
            session_id: the id to use (default: a fresh one).
        """
        return open_session(self, ttl=ttl, mode=mode, metadata=metadata,
                            session_id=session_id)

    # -- introspection -------------------------------------------------------------------
    def stats(self) -> PoolStats:
        """A snapshot of the pool: per-worker state and the pool's totals."""
        workers = tuple(self._slot_stats(slot) for slot in self._slots)
        return PoolStats(
            name=self.config.name,
            workers=workers,
            queue_depth=self._dispatcher.queue_depth,
            in_flight=sum(w.in_flight for w in workers),
            restarts=sum(w.restarts for w in workers),
            sessions=len(self.sessions),
            draining=self.draining,
            **self._counters.snapshot(),
        )

    def _slot_stats(self, slot: Slot) -> WorkerStats:
        worker = slot.worker
        p50, p99 = percentiles(slot.latencies, (0.50, 0.99))
        return WorkerStats(
            id=slot.id,
            pid=worker.pid if worker is not None else None,
            state=slot.current_state,
            calls_served=slot.calls_served,
            in_flight=sum(live.in_flight for live in slot.live_workers()),
            restarts=slot.restarts,
            info=dict(self._kind.worker_info(slot.id)) if self._kind is not None else {},
            latency_p50=p50,
            latency_p99=p99,
            rss=resident_memory(worker.pid) if worker is not None else None,
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
    group) and waits for them: no process outlives the block. While the block runs,
    the pool serves its control socket (``config.control``).

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
    async with run_pool(config, control=control_enabled(config.control)) as pool:
        yield pool


@asynccontextmanager
async def run_pool(config: PoolConfig, *, control: bool) -> AsyncIterator[Pool]:
    """:func:`open_pool` with the control socket chosen by the caller (a pool of
    :func:`~snakepit.open_pools` is reported by its group's socket instead)."""
    plugin_manager()  # installed plugins (telemetry listeners among them) load once
    stopping: float | None = None
    try:
        with unwrap_single_error(), EventLog([config.name] if control else []) as events:
            async with trio.open_nursery() as nursery:
                pool = Pool(config, nursery)
                try:
                    await pool._start()
                    if control:
                        await nursery.start(serve_control, {config.name: pool},
                                            registry(config), events)
                    stopping = math.inf  # started: pool.stopped will be emitted
                    yield pool
                finally:
                    stopping = trio.current_time() if stopping is not None else None
                    with trio.CancelScope(shield=True):
                        await pool.aclose()
    finally:
        if stopping is not None:  # every worker has exited: the nursery is done
            pool._emit("pool.stopped", {"duration": trio.current_time() - stopping})


__all__ += ["SessionHandle"]
