"""The pool: the public call API, a facade over the parts that do the work.

Each part is given what it needs, never the pool itself:

- :class:`~snakepit.pool.dispatch.Dispatcher` -- worker capacity, the wait queue;
- :class:`~snakepit.pool.slots.WorkerSlots` -- the slots (supervision), ready and
  exited workers, outages;
- :class:`~snakepit.pool.launcher.Launcher` -- the adapter, the pool kind, the fork
  server;
- :class:`~snakepit.pool.calls.CallPath` -- a call's deadline, worker, retries (pinned
  calls included) behind the :class:`~snakepit.pool.calls.Gate`;
- :class:`~snakepit.pool.session.SessionAffinity` -- sessions and their workers;
- :class:`~snakepit.pool.dynamic.DynamicCalls` -- the enhanced bridge and its refs;
- :class:`~snakepit.pool.health.HealthMonitor` -- health checks and heartbeats;
- :class:`~snakepit.pool.tools.ToolBox` -- host tools, worker events;
- :class:`~snakepit.pool.broadcast.Broadcasts` -- broadcasts and replayed set-up.

The nursery tree they run in is assembled by :mod:`snakepit.pool.tree` (``open_pool``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from snakepit import telemetry
from snakepit.config import PoolConfig
from snakepit.pool.broadcast import Broadcasts
from snakepit.pool.calls import CallPath, Gate
from snakepit.pool.dispatch import Dispatcher
from snakepit.pool.dynamic import DynamicCalls
from snakepit.pool.health import HealthMonitor
from snakepit.pool.launcher import Launcher
from snakepit.pool.mapping import MapResults, open_map
from snakepit.pool.session import SessionAffinity, SessionHandle, open_session
from snakepit.pool.slots import WorkerSlots
from snakepit.pool.stats import CallCounters, PoolStats
from snakepit.pool.stream import ChunkStream, open_stream
from snakepit.pool.tools import ToolBox, ToolFunction
from snakepit.refs import Ref
from snakepit.resilience.breaker import CircuitBreaker
from snakepit.sessions.store import AffinityMode
from snakepit.worker.calls import ProgressCallback
from snakepit.worker.worker import Worker

__all__ = ["Pool", "SessionHandle"]


class Pool:
    """A running pool of workers. Create it with :func:`~snakepit.open_pool`."""

    def __init__(self, config: PoolConfig, nursery: trio.Nursery) -> None:
        self._launcher = Launcher(config)
        self.config = config = self._launcher.config  # its codec negotiated with the adapter
        self._nursery = nursery
        self._dispatcher = Dispatcher(config.max_queue, config.pipeline_depth)
        self._slots = WorkerSlots(config, self._dispatcher, self._launcher.launch, self._emit,
                                  on_exit=self._worker_exited)
        self._gate = Gate(config.name)
        self._counters = CallCounters()
        breaker = (None if config.circuit_breaker is None else CircuitBreaker(
            config.circuit_breaker, trio.current_time,
            lambda circuit, state: self._emit("circuit.changed", {}, circuit=circuit,
                                              state=state)))
        self._affinity = SessionAffinity(config.session_ttl, self._dispatcher,
                                         self._slots.worker, self._emit)
        self.sessions = self._affinity.store
        """The pool's :class:`~snakepit.sessions.store.SessionStore`."""
        self._calls = CallPath(config, self._gate, self._dispatcher, self._affinity,
                               self._counters, breaker, self._emit)
        self._dynamic = DynamicCalls(self._calls, self._slots.worker, nursery, owner=self)
        self._health = HealthMonitor(config, self._slots, self._dispatcher, self._emit,
                                     self._launcher.worker_info)
        self._tools = ToolBox(config.name, nursery, config.host_tool_limit)
        self._broadcasts = Broadcasts(self._calls, self._dispatcher, self._slots.workers,
                                      self._emit)
        adopt = self._broadcasts.adopt(nursery)

        def adopt_worker(worker: Worker, serving: Callable[[Worker], None]) -> None:
            worker.host = self._tools  # its host calls and events come here
            adopt(worker, serving)
        self._slots.adopt = adopt_worker

    @property
    def name(self) -> str:
        return self.config.name

    def _emit(self, event: str, measurements: dict[str, float], **metadata: Any) -> None:
        if telemetry.enabled(event):
            telemetry.emit(event, measurements, {"pool": self.config.name, **metadata})

    def _worker_exited(self, worker: Worker) -> None:
        self.sessions.worker_lost(worker.id, worker.pid)
        self._launcher.worker_exited(worker)

    # -- life cycle ------------------------------------------------------------------
    async def wait_ready(self) -> None:
        """Wait until every slot has a worker ready for calls (or has failed).

        Useful after a crash or a kill, to know the replacements are serving.
        """
        await self._slots.wait_ready()

    async def aclose(self) -> None:
        """Shut down: refuse new calls, let workers finish and exit, then the ladder.

        Bounded by ``shutdown_grace`` plus the SIGTERM/SIGKILL steps of the ladder.
        """
        if self._gate.closed:
            return
        self._gate.closed = True
        self._dispatcher.close()
        await self._slots.stop(self.config.shutdown_grace)
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
        return self._slots.in_flight

    # -- operator actions --------------------------------------------------------------
    @property
    def draining(self) -> bool:
        """Whether :meth:`drain` is in force."""
        return self._gate.draining

    def drain(self) -> None:
        """Refuse new calls with :class:`PoolDraining`; calls already waiting or running
        finish. :meth:`resume` takes calls again. (The control socket's ``drain``.)"""
        if not self._gate.draining:
            self._gate.draining = True
            self._emit("pool.drained", {"in_flight": self.in_flight})

    def resume(self) -> None:
        """Take new calls again after :meth:`drain`."""
        if self._gate.draining:
            self._gate.draining = False
            self._emit("pool.resumed", {})

    def recycle(self, worker_id: str) -> int | None:
        """Retire slot ``worker_id``'s worker as ``max_calls`` would: it takes no new
        calls, finishes those it has and exits while its replacement starts.

        Returns the pid of the retiring process, or ``None`` when the slot has no worker
        taking calls (starting, restarting, already retiring).

        Raises:
            KeyError: the pool has no slot ``worker_id``.
        """
        return self._slots.recycle(worker_id)

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
        return (await self._calls.run_attempts(command, args, timeout, on_progress, None,
                                                idempotent))[0]

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
        return (await self._calls.run_attempts(command, args, timeout, on_progress,
                                                session_id, idempotent))[0]

    def stream(self, command: str, args: Any = None, *, timeout: float | None = None,
               window: int | None = None, session_id: str | None = None
               ) -> AbstractAsyncContextManager[ChunkStream]:
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
        return open_stream(self._calls, self._affinity, self._nursery, command, args,
                           timeout, window, session_id)

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
        capacity = sum(w.capacity for w in self.workers()) or self.config.size
        return open_map(self._calls, self._dynamic, self._nursery, capacity, command, items,
                        chunksize=chunksize, timeout=timeout,
                        return_exceptions=return_exceptions, session_id=session_id)

    # -- the enhanced bridge -------------------------------------------------------------
    async def call(self, target: str, *args: Any, timeout: float | None = None,
                   **kwargs: Any) -> Any:
        """Call the dotted callable ``target`` in a worker: ``await pool.call("json.dumps",
        [1, 2])``. Returns the result, or a :class:`~snakepit.Ref` when it cannot travel.
        Refs among the arguments route the call to the worker that holds them.

        ``timeout`` is the call's own deadline in seconds (as for ``execute``), not an
        argument of the target; pass a keyword literally named ``timeout`` to the
        target with :meth:`invoke`: ``pool.invoke(target, args, {"timeout": 5})``."""
        return await self._dynamic.invoke(target, args, kwargs, timeout=timeout)

    async def invoke(self, target: str, args: Sequence[Any] = (),
                     kwargs: dict[str, Any] | None = None, *, timeout: float | None = None,
                     store_as: str | None = None, session_id: str | None = None) -> Any:
        """:meth:`call` with every option: a timeout, a name to keep the result under
        in the worker, a session whose object store to use. ``args`` and ``kwargs`` go
        to the target as they are (a ``"timeout"`` key in ``kwargs`` included)."""
        return await self._dynamic.invoke(target, args, kwargs, timeout=timeout,
                                          store_as=store_as, session_id=session_id)

    async def pipeline(self, steps: Sequence[dict[str, Any]], *, timeout: float | None = None,
                       session_id: str | None = None) -> list[Any]:
        """Run steps in one worker, in order; each ``{"target": ...}`` or ``{"ref": Ref,
        "name": method}``, with ``args``, ``kwargs`` and ``store_as``. A later step uses
        an earlier result with ``{"$stored": name}``. Returns every step's result."""
        return await self._dynamic.pipeline(steps, timeout=timeout, session_id=session_id)

    async def invoke_on(self, ref: Ref, command: str, payload: dict[str, Any],
                        timeout: float | None = None) -> Any:
        """Run an enhanced-bridge ``command`` on the worker holding ``ref``."""
        return await self._dynamic.invoke_on(ref, command, payload, timeout)

    async def release(self, *refs: Ref) -> int:
        """Free the objects of ``refs`` in their workers now (``await ref.release()``
        for each); returns how many were still there. Other Refs to them raise
        :class:`~snakepit.errors.RefLost` from then on."""
        return await self._dynamic.release(*refs)

    async def collect_refs(self) -> None:
        """Free, now, the worker objects whose every host Ref has been garbage-collected.

        This happens in the background anyway, shortly after the last Ref to an object
        goes; call this to be sure it has happened (before measuring a worker's memory,
        say). It runs the garbage collector and waits for the workers' answers.
        """
        await self._dynamic.collect_refs()

    # -- host tools and broadcasts (pool/tools.py, pool/broadcast.py) ---------------------
    def register_tool(self, name: str, fn: ToolFunction, *,
                      description: str | None = None) -> None:
        """Let every call's handler run ``await fn(args)`` in the host with
        ``ctx.call_host(name, args)`` (see docs/host-tools.md); replaces a tool of that
        name. ``description`` (default: ``fn``'s docstring) is listed by
        ``ctx.host_tools()``.

        Raises:
            TypeError: ``name`` is empty or reserved, or ``fn`` is not callable.
        """
        self._tools.register(name, fn, description)

    async def broadcast(self, command: str, args: Any = None, *,
                        timeout: float | None = None) -> dict[str, Any]:
        """Run ``command`` once on every live worker, concurrently; returns each
        worker's result by worker id -- or, for a worker where it failed (or that died
        meanwhile), the :class:`~snakepit.errors.SnakepitError` it raised, in the
        result's place."""
        self._gate.check()
        return await self._broadcasts.broadcast(command, args, self._calls.deadline(timeout))

    async def setup(self, command: str, args: Any = None, *,
                    timeout: float | None = None) -> dict[str, Any]:
        """:meth:`broadcast` ``command`` now, and replay it on every worker started
        later (a replacement, a recycled one) before that worker takes calls -- for
        ``dspy.configure`` and the like. Returns the broadcast's results."""
        self._gate.check()
        return await self._broadcasts.setup(command, args, self._calls.deadline(timeout))

    # -- sessions --------------------------------------------------------------------------
    def slot_worker(self, slot_id: str) -> Worker | None:
        """The current worker of slot ``slot_id`` (None between processes)."""
        return self._slots.worker(slot_id)

    def session(self, *, ttl: float | None = None, mode: AffinityMode = "prefer",
                metadata: dict[str, Any] | None = None, session_id: str | None = None,
                tools: dict[str, ToolFunction] | None = None
                ) -> AbstractAsyncContextManager[SessionHandle]:
        """Open a session for the block: ``async with pool.session() as s:``.

        Args:
            ttl: seconds of disuse after which the session expires (default
                ``config.session_ttl``).
            mode: ``"prefer"`` or ``"strict"`` affinity (see :meth:`execute_in_session`).
            metadata: free-form data kept with the session in the store.
            session_id: the id to use (default: a fresh one).
            tools: host tools only this session's calls reach, by name (shadowing
                pool tools of the same name); gone when the session ends.
        """
        session = open_session(self, ttl=ttl, mode=mode, metadata=metadata,
                               session_id=session_id)
        return self._tools.with_tools(session, tools) if tools else session

    # -- introspection -------------------------------------------------------------------
    def stats(self) -> PoolStats:
        """A snapshot of the pool: per-worker state and the pool's totals."""
        workers = self._slots.stats(self._launcher.worker_info)
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

    def workers(self) -> list[Worker]:
        """The live worker handles, in slot order (for tests and operators)."""
        return self._slots.workers()
