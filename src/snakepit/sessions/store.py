"""The session store: ids, TTLs, metadata, and which worker holds each session's state.

Pure in-process data (no I/O, no awaits) so that its operations cost microseconds
(``benchmarks/sessions.py`` measures them). Expiry is lazy on access and eager in the
pool's sweeper, which uses a heap of candidate expiry times: touching a session does
not touch the heap, so the hot operations stay O(1).
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from snakepit.errors import ConfigError, SessionNotFound

__all__ = ["AffinityMode", "Session", "SessionStore", "SessionStoreStats"]

AffinityMode = Literal["prefer", "strict"]

_HEAP_SLACK = 1024
"""Stale expiry-heap entries tolerated beyond the live sessions before a rebuild."""


class Session:
    """One session's record in the store (read it; change it through the store)."""

    __slots__ = ("created_at", "id", "in_use", "last_used", "lost", "metadata", "mode", "ttl",
                 "visited", "worker", "worker_pid")

    def __init__(self, session_id: str, *, ttl: float | None, mode: AffinityMode,
                 metadata: dict[str, Any], now: float) -> None:
        self.id = session_id
        self.ttl = ttl
        self.mode: AffinityMode = mode
        self.metadata = metadata
        self.created_at = now
        self.last_used = now
        self.worker: str | None = None
        """Id of the worker slot holding this session's state, once bound."""
        self.worker_pid: int | None = None
        """Pid of the process that holds the state (a restarted slot has another)."""
        self.lost = False
        """The bound worker died: its state for this session is gone."""
        self.in_use = 0
        """Calls of this session running now; a session in use never expires."""
        self.visited: dict[str, int] | None = None
        """Other workers (slot id: pid) that ran calls of this session without holding
        its binding (prefer-mode fallbacks): they may keep state for it too."""

    def holders(self) -> list[tuple[str, int]]:
        """The workers (slot id, pid) that may keep state for this session: the bound
        one and those recorded by :meth:`SessionStore.visit`."""
        holders = [] if self.worker is None else [(self.worker, self.worker_pid or 0)]
        if self.visited:
            holders.extend(item for item in self.visited.items() if item not in holders)
        return holders

    def expires_at(self) -> float:
        return float("inf") if self.ttl is None else self.last_used + self.ttl

    def expired(self, now: float) -> bool:
        return self.in_use == 0 and now >= self.expires_at()

    def __repr__(self) -> str:
        return (f"<Session {self.id} mode={self.mode} worker={self.worker} "
                f"pid={self.worker_pid} lost={self.lost}>")


@attrs.frozen
class SessionStoreStats:
    """Counts of a session store."""

    active: int
    """Sessions currently in the store."""
    created: int
    """Sessions created since the store started."""
    expired: int
    """Sessions removed by their TTL."""
    deleted: int
    """Sessions deleted by the application."""


class SessionStore:
    """Sessions of one pool, by id.

    Args:
        clock: the time source (the pool passes ``trio.current_time``).
        default_ttl: TTL of sessions created without one (``None``: never expire).
        on_end: called with each session removed (deleted or expired), so the pool can
            tell the worker to drop its state.
        on_create: called with each session created (the sweeper looks again at the
            next expiry; telemetry hears of it).
    """

    def __init__(self, clock: Callable[[], float], *, default_ttl: float | None = None,
                 on_end: Callable[[Session, str], None] | None = None,
                 on_create: Callable[[Session], None] | None = None) -> None:
        self._clock = clock
        self.default_ttl = default_ttl
        self._sessions: dict[str, Session] = {}
        self._by_worker: dict[str, set[str]] = {}
        self._expiry_heap: list[tuple[float, str]] = []
        self._on_end = on_end
        self._on_create = on_create
        self._counts = {"created": 0, "expired": 0, "deleted": 0}
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    # -- the operations ------------------------------------------------------------------
    def create(self, session_id: str | None = None, *, ttl: float | None = None,
               mode: AffinityMode = "prefer", metadata: Mapping[str, Any] | None = None
               ) -> Session:
        """Create a session (a fresh id unless one is given) and return it.

        ``ttl`` is seconds of disuse before the session expires: ``None`` takes the
        store's default, ``math.inf`` never expires. A session expires only while no
        call of it runs.

        Raises:
            ConfigError: a bad ``ttl`` or ``mode``, or ``session_id`` already exists.
        """
        ttl = self.default_ttl if ttl is None else ttl
        errors = []
        if ttl is not None and not (isinstance(ttl, int | float) and ttl > 0):
            errors.append(f"ttl: must be a number > 0 or None (got {ttl!r})")
        if mode not in ("prefer", "strict"):
            errors.append(f"mode: must be 'prefer' or 'strict' (got {mode!r})")
        if session_id is None:
            session_id = f"{self._prefix}-{next(self._ids)}"
        elif session_id in self._sessions:
            errors.append(f"session_id: {session_id!r} already exists")
        if errors:
            raise ConfigError(errors)
        now = self._clock()
        session = Session(session_id, ttl=ttl, mode=mode, metadata=dict(metadata or {}),
                          now=now)
        self._sessions[session_id] = session
        if ttl is not None and ttl != math.inf:
            heapq.heappush(self._expiry_heap, (now + ttl, session_id))
        self._counts["created"] += 1
        if self._on_create is not None:
            self._on_create(session)
        return session

    def get(self, session_id: str) -> Session:
        """The live session ``session_id``.

        Raises:
            SessionNotFound: unknown, deleted or expired.
        """
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"no session {session_id!r} (unknown, deleted or expired)")
        if session.expired(self._clock()):
            self._remove(session, "expired")
            raise SessionNotFound(f"session {session_id!r} expired")
        return session

    def touch(self, session_id: str) -> Session:
        """Mark the session used now (its TTL counts from here); returns it."""
        session = self.get(session_id)
        session.last_used = self._clock()
        return session

    def update_metadata(self, session_id: str, **values: Any) -> Session:
        """Merge ``values`` into the session's metadata; returns the session."""
        session = self.get(session_id)
        session.metadata.update(values)
        return session

    def delete(self, session_id: str) -> None:
        """Remove the session; ``on_end`` hears of it (the pool tells the workers
        holding its state to drop it).

        Raises:
            SessionNotFound: unknown or already gone.
        """
        self._remove(self.get(session_id), "deleted")

    def sessions(self) -> list[Session]:
        """Every live session (not yet swept ones included)."""
        return list(self._sessions.values())

    def stats(self) -> SessionStoreStats:
        return SessionStoreStats(active=len(self._sessions), **self._counts)

    # -- affinity -------------------------------------------------------------------------
    def bind(self, session: Session, worker_id: str, pid: int) -> None:
        """Record that worker ``worker_id`` (process ``pid``) now holds the session."""
        if session.worker is not None:
            self._by_worker.get(session.worker, set()).discard(session.id)
        session.worker, session.worker_pid, session.lost = worker_id, pid, False
        self._by_worker.setdefault(worker_id, set()).add(session.id)

    def visit(self, session: Session, worker_id: str, pid: int) -> None:
        """Record that worker ``worker_id`` (process ``pid``) ran a call of the session
        without being bound to it, so that it too is told when the session ends."""
        if session.worker == worker_id and session.worker_pid == pid:
            return
        if session.visited is None:
            session.visited = {}
        session.visited[worker_id] = pid

    def worker_lost(self, worker_id: str, pid: int) -> list[Session]:
        """The process ``pid`` of slot ``worker_id`` died: its sessions lost their state.

        Returns the sessions affected; each is unbound and marked ``lost``.
        """
        affected = []
        for session_id in self._by_worker.pop(worker_id, set()):
            session = self._sessions.get(session_id)
            if session is not None and session.worker_pid == pid:
                session.worker = session.worker_pid = None
                session.lost = True
                affected.append(session)
            elif session is not None:
                self._by_worker.setdefault(worker_id, set()).add(session_id)
        return affected

    # -- expiry -------------------------------------------------------------------------------
    def next_expiry(self) -> float | None:
        """The earliest time a session may expire (``None`` when none can)."""
        return self._expiry_heap[0][0] if self._expiry_heap else None

    def expire_due(self) -> list[Session]:
        """Remove every session idle past its TTL; returns them."""
        now = self._clock()
        heap, expired = self._expiry_heap, []
        while heap and heap[0][0] <= now:
            _, session_id = heapq.heappop(heap)
            session = self._sessions.get(session_id)
            if session is None:
                continue
            if session.expired(now):
                self._remove(session, "expired")
                expired.append(session)
            else:  # touched since, or in use: look again later
                heapq.heappush(heap, (max(session.expires_at(), now + (session.ttl or 0)),
                                      session_id))
        return expired

    def _remove(self, session: Session, reason: str) -> None:
        del self._sessions[session.id]
        heap = self._expiry_heap
        if len(heap) > 2 * len(self._sessions) + _HEAP_SLACK:
            # Entries of removed sessions are skipped when they surface; rebuilt from
            # the live sessions once they outnumber them, the heap stays within twice
            # the store's size at O(1) amortised cost per removal.
            heap[:] = [(s.expires_at(), s.id) for s in self._sessions.values()
                       if s.ttl is not None and s.ttl != math.inf]
            heapq.heapify(heap)
        if session.worker is not None:
            self._by_worker.get(session.worker, set()).discard(session.id)
        self._counts[reason] += 1
        if self._on_end is not None:
            self._on_end(session, reason)

