"""Session affinity: which worker a session's calls go to, and the handle users hold."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import trio

from snakepit import telemetry
from snakepit.errors import SessionNotFound, SessionWorkerLost
from snakepit.sessions.store import AffinityMode, Session, SessionStore
from snakepit.worker.calls import ProgressCallback

if TYPE_CHECKING:
    from snakepit.pool.dispatch import Dispatcher
    from snakepit.worker.worker import Worker


class SessionAffinity:
    """A pool's sessions: the store, routing calls to the bound worker, TTL sweeping.

    Args:
        default_ttl: ``config.session_ttl``.
        dispatcher: hands out worker capacity.
        slot_worker: the current worker of a slot (or None).
        emit: the pool's telemetry.
    """

    def __init__(self, default_ttl: float | None, dispatcher: Dispatcher,
                 slot_worker: Callable[[str], Worker | None],
                 emit: Callable[..., None]) -> None:
        self._dispatcher = dispatcher
        self._slot_worker = slot_worker
        self._emit = emit
        self._sweeper_lot = trio.lowlevel.ParkingLot()
        self._sweep_at = math.inf
        """When the sweeper looks next (it is woken earlier only for a sooner expiry)."""
        self.store = SessionStore(trio.current_time, default_ttl=default_ttl,
                                  on_end=self._ended, on_create=self._created)

    def bound_worker(self, session: Session) -> Worker | None:
        """The live worker holding ``session``'s state, or None."""
        if session.worker is None:
            return None
        worker = self._slot_worker(session.worker)
        if worker is None or worker.pid != session.worker_pid or not worker.accepting:
            return None
        return worker

    async def acquire(self, session: Session, deadline: float) -> Worker:
        """Affinity: the session's worker when it has one (per its mode), else any."""
        if session.worker is not None and self.bound_worker(session) is None:
            # bound to a worker that is going away: its state for the session is lost
            self.store.worker_lost(session.worker, session.worker_pid or 0)
        if session.lost and session.mode == "strict":
            session.lost = False  # said once; the next call starts afresh elsewhere
            raise SessionWorkerLost(
                f"the worker holding session {session.id!r} is gone (it died or was "
                "recycled), and the session's state with it")
        bound = self.bound_worker(session)
        if bound is None:
            worker = await self._dispatcher.acquire_until(deadline)
            self.store.bind(session, worker.id, worker.pid)
            return worker
        if session.mode == "prefer":
            # only a primary unit: a pipelined one would queue behind a running call
            if self._dispatcher.try_acquire_worker(bound, primary_only=True):
                return bound
            worker = await self._dispatcher.acquire_until(deadline)  # busy: any worker will do
            if worker is not bound:  # it may keep state for the session too
                self.store.visit(session, worker.id, worker.pid)
            return worker
        try:
            worker = await self._dispatcher.acquire_until(deadline, bound)
            if not worker.accepting:  # retiring since the hand-over: its state will go
                self._dispatcher.release(worker)
                self.store.worker_lost(worker.id, worker.pid)
                raise SessionWorkerLost(f"the worker holding session {session.id!r} is "
                                        "being recycled; its state goes with it")
            return worker
        except SessionWorkerLost:
            session.lost = False  # this caller has been told; the next call starts afresh
            raise

    def _created(self, session: Session) -> None:
        if session.ttl is not None and session.created_at + session.ttl < self._sweep_at:
            self._sweeper_lot.unpark_all()  # it expires before the sweeper's next look
        if telemetry.enabled("session.created"):  # no payload built for nobody
            self._emit("session.created", {"ttl": session.ttl or 0.0},
                            session=session.id, mode=session.mode)

    def _ended(self, session: Session, reason: str) -> None:
        # Only the workers that ran the session's calls (the bound one, prefer-mode
        # fallbacks) and still run as the same process: a delete costs one frame, not
        # one per worker. (A call pinned to an object's worker runs where a call of
        # the session made that object, so that worker is among them.)
        for worker_id, pid in session.holders():
            worker = self._slot_worker(worker_id)
            if worker is not None and worker.pid == pid:
                worker.drop_session(session.id)
        event = f"session.{reason}"
        if telemetry.enabled(event):
            self._emit(event, {"age": trio.current_time() - session.created_at},
                            session=session.id, worker=session.worker)

    async def sweep(self) -> None:
        """Expire idle sessions as their TTLs pass (woken early when one is created)."""
        store = self.store
        while True:
            store.expire_due()
            next_expiry = store.next_expiry()
            self._sweep_at = math.inf if next_expiry is None else next_expiry
            with trio.move_on_at(self._sweep_at):
                await self._sweeper_lot.park()



class SessionPool(Protocol):
    """What a :class:`SessionHandle` needs of its pool (a :class:`~snakepit.Pool`)."""

    sessions: SessionStore

    async def execute_in_session(self, session_id: str, command: str, args: Any = None, *,
                                 timeout: float | None = None,
                                 on_progress: ProgressCallback | None = None,
                                 idempotent: bool = False) -> Any: ...

    async def invoke(self, target: str, args: Any = (), kwargs: dict[str, Any] | None = None,
                     *, timeout: float | None = None, store_as: str | None = None,
                     session_id: str | None = None) -> Any: ...

    def stream(self, command: str, args: Any = None, *, timeout: float | None = None,
               window: int | None = None, session_id: str | None = None
               ) -> AbstractAsyncContextManager[Any]: ...

    def map(self, command: str, items: Any, *, chunksize: int | None = None,
            timeout: float | None = 60.0, return_exceptions: bool = False,
            session_id: str | None = None) -> AbstractAsyncContextManager[Any]: ...


class SessionHandle:
    """A session of one pool: calls through it share the worker-side state.

    Obtained from ``async with pool.session() as s``; the session is deleted (and its
    worker-side state dropped) when the block ends.
    """

    def __init__(self, pool: SessionPool, session: Session) -> None:
        self.pool = pool
        self.id = session.id

    @property
    def record(self) -> Session:
        """The store's record (binding, metadata, last use)."""
        return self.pool.sessions.get(self.id)

    async def execute(self, command: str, args: Any = None, *, timeout: float | None = None,
                      on_progress: ProgressCallback | None = None,
                      idempotent: bool = False) -> Any:
        """``pool.execute_in_session(self.id, ...)``."""
        return await self.pool.execute_in_session(self.id, command, args, timeout=timeout,
                                                  on_progress=on_progress,
                                                  idempotent=idempotent)

    async def call(self, target: str, *args: Any, timeout: float | None = None,
                   **kwargs: Any) -> Any:
        """``pool.call`` within this session: refs it returns belong to the session
        and are freed with it. ``timeout`` is the call's deadline, as for ``pool.call``."""
        return await self.pool.invoke(target, args, kwargs, timeout=timeout,
                                      session_id=self.id)

    def stream(self, command: str, args: Any = None, *, timeout: float | None = None,
               window: int | None = None) -> Any:
        """``pool.stream(...)`` within this session (an async context manager)."""
        return self.pool.stream(command, args, timeout=timeout, window=window,
                                session_id=self.id)

    def map(self, command: str, items: Any, *, chunksize: int | None = None,
            timeout: float | None = 60.0, return_exceptions: bool = False) -> Any:
        """``pool.map(...)`` within this session (an async context manager)."""
        return self.pool.map(command, items, chunksize=chunksize, timeout=timeout,
                             return_exceptions=return_exceptions, session_id=self.id)


@asynccontextmanager
async def open_session(pool: SessionPool, *, ttl: float | None, mode: AffinityMode,
                       metadata: dict[str, Any] | None, session_id: str | None
                       ) -> AsyncIterator[SessionHandle]:
    session = pool.sessions.create(session_id, ttl=ttl, mode=mode, metadata=metadata)
    try:
        yield SessionHandle(pool, session)
    finally:
        with contextlib.suppress(SessionNotFound):  # it may have expired meanwhile
            pool.sessions.delete(session.id)


__all__ = ["SessionAffinity", "SessionHandle", "open_session"]
