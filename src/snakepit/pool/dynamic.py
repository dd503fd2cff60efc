"""``pool.call``: dynamic calls through the enhanced bridge, and routing by refs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from snakepit.errors import PayloadError, RefLost, RemoteError
from snakepit.plugins import host_serializers
from snakepit.pool.releases import RefReleases
from snakepit.refs import Ref, from_wire, refs_in, to_wire

if TYPE_CHECKING:
    from snakepit.bridge.hookspecs import Serializer
    from snakepit.pool.calls import CallPath
    from snakepit.refs import RefOwner
    from snakepit.worker.worker import Worker


class DynamicCalls:
    """The enhanced bridge's host API, a part of :class:`~snakepit.Pool` (which
    delegates ``call``, ``invoke``, ``pipeline``... here).

    The pool's workers must serve ``snakepit.bridge.enhanced:EnhancedHandler`` (or a
    subclass), and targets must be under ``PoolConfig.allowed_targets``.

    Args:
        calls: the pool's call path.
        slot_worker: the current worker of a slot (or None).
        nursery: the pool's nursery, where the background releaser runs.
        owner: what the Refs made here call back (the :class:`~snakepit.Pool`).
    """

    def __init__(self, calls: CallPath, slot_worker: Callable[[str], Worker | None],
                 nursery: trio.Nursery, owner: RefOwner) -> None:
        self._calls = calls
        self._slot_worker = slot_worker
        self._nursery = nursery
        self._owner = owner
        self._releases: RefReleases | None = None

    async def invoke(self, target: str, args: Sequence[Any] = (),
                     kwargs: dict[str, Any] | None = None, *, timeout: float | None = None,
                     store_as: str | None = None, session_id: str | None = None) -> Any:
        """:meth:`call` with every option: a timeout, a name to keep the result under
        in the worker, a session whose object store to use. ``args`` and ``kwargs`` go
        to the target as they are (a ``"timeout"`` key in ``kwargs`` included)."""
        payload: dict[str, Any] = {"target": target, "args": list(args),
                                   "kwargs": dict(kwargs or {})}
        if store_as is not None:
            payload["store_as"] = store_as
        return await self._dynamic("call", payload, refs_in((args, kwargs)), timeout,
                                   session_id, target=target)

    async def pipeline(self, steps: Sequence[dict[str, Any]], *, timeout: float | None = None,
                       session_id: str | None = None) -> list[Any]:
        """Run steps in one worker, in order; each ``{"target": ...}`` or ``{"ref": Ref,
        "name": method}``, with ``args``, ``kwargs`` and ``store_as``. A later step uses
        an earlier result with ``{"$stored": name}``. Returns every step's result."""
        prepared, refs = [], []
        for step in steps:
            step = dict(step)
            if isinstance(step.get("ref"), Ref):
                refs.append(step["ref"])
                step["ref"] = step["ref"].id
            refs.extend(refs_in((step.get("args"), step.get("kwargs"))))
            prepared.append(step)
        result: list[Any] = await self._dynamic("pipeline", {"steps": prepared}, refs,
                                                timeout, session_id)
        return result

    async def invoke_on(self, ref: Ref, command: str, payload: dict[str, Any],
                        timeout: float | None = None) -> Any:
        """Run an enhanced-bridge ``command`` on the worker holding ``ref``."""
        return await self._dynamic(command, payload, [ref], timeout, ref.session_id)

    async def release(self, *refs: Ref) -> int:
        """Free the objects of ``refs`` in their workers now (``await ref.release()``
        for each); returns how many were still there. Other Refs to them raise
        :class:`~snakepit.errors.RefLost` from then on."""
        released = 0
        for ref in refs:
            released += await ref.release()
        return released

    async def collect_refs(self) -> None:
        """Free, now, the worker objects whose every host Ref has been garbage-collected.

        This happens in the background anyway, shortly after the last Ref to an object
        goes; call this to be sure it has happened (before measuring a worker's memory,
        say). It runs the garbage collector and waits for the workers' answers.
        """
        if self._releases is not None:
            await self._releases.collect()

    def _counted_refs(self) -> RefReleases:
        """This pool's :class:`RefReleases`, made (and its background task started) on
        first use."""
        if self._releases is None:
            self._releases = RefReleases(self._calls, self._slot_worker)
            self._nursery.start_soon(self._releases.run)
        return self._releases

    async def _dynamic(self, command: str, payload: dict[str, Any], refs: list[Ref],
                       timeout: float | None, session_id: str | None,
                       target: str | None = None) -> Any:
        serializers = host_serializers()
        pinned = None
        owners = {(ref.worker, ref.pid) for ref in refs}
        if len(owners) > 1:
            raise PayloadError("refs held by different workers cannot meet in one call")
        if refs:
            session_id = _scope(refs, session_id)
            if session_id is not None:
                # SessionNotFound once it ended; else it keeps the session alive
                self._calls.sessions.touch(session_id)
            pinned = self._slot_worker(refs[0].worker)
            if pinned is None or pinned.pid != refs[0].pid:
                raise RefLost(f"the worker that held {refs[0]!r} died; the object is gone")
        try:
            data, attempt = await self._calls.run_attempts(command, to_wire(payload, serializers),
                                                     timeout, None, session_id, pinned=pinned,
                                                     target=target)
        except RemoteError as exc:
            if exc.remote_type.rpartition(".")[2] == "RefNotFound":
                raise RefLost(exc.remote_message) from exc
            raise
        worker = attempt.worker
        assert worker is not None  # it answered
        return self.values_from(data, worker, session_id, serializers)

    def values_from(self, data: Any, worker: Worker, session_id: str | None,
                    serializers: Sequence[Serializer] | None = None) -> Any:
        """Host values of what ``worker`` answered: ref markers become Refs of it (counted
        outside sessions, freed when they go), tagged maps objects."""
        releases = self._counted_refs() if session_id is None else None
        return from_wire(data, serializers if serializers is not None else host_serializers(),
                         self._owner, worker.id, worker.pid, session_id, releases)


def _scope(refs: list[Ref], session_id: str | None) -> str | None:
    """The session a call with ``refs`` runs in: theirs. Refs of different scopes (two
    sessions, or a session and the worker's global store) cannot meet, and a call in a
    session cannot use another scope's refs: the worker keeps each scope's objects apart.

    Raises:
        PayloadError: the scopes differ.
    """
    def scope(session: str | None) -> str:
        return "the worker's global store" if session is None else f"session {session!r}"

    scopes = {ref.session_id for ref in refs}
    if len(scopes) > 1:
        raise PayloadError("refs of different scopes cannot meet in one call: "
                           + ", ".join(sorted(scope(s) for s in scopes)))
    (owner,) = scopes
    if session_id is not None and owner != session_id:
        where = "outside sessions (pool.call)" if owner is None else "in its own session"
        raise PayloadError(f"{refs[0]!r} belongs to {scope(owner)}, not to "
                           f"{scope(session_id)}: use it {where}")
    return owner
