"""Refs: handles on objects that live in one worker, and the host side of
``pool.call``.

A result the enhanced bridge cannot send (a ``dspy.Predict``, an open model) stays in
the worker that made it; the host gets a :class:`Ref`. Calls through the ref -- and any
call that passes it as an argument -- go to that worker; if it has died, they fail
with :class:`~snakepit.errors.RefLost` without running.

Lifetime: an object made outside a session stays in its worker while the host holds a
Ref to it; when the last such Ref is garbage-collected the worker is told to free it
(:mod:`snakepit.pool.releases`). ``await ref.release()`` frees it at once. An object
made in a session goes with the session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from snakepit.bridge.hookspecs import REF_KEY, TAG_KEY, Serializer
from snakepit.bridge.plugins import decode_tagged, is_tagged
from snakepit.errors import PayloadError

if TYPE_CHECKING:
    from snakepit.pool.releases import RefReleases


class RefOwner(Protocol):
    """What a :class:`Ref` calls back: the pool whose worker holds its object."""

    async def invoke_on(self, ref: Ref, command: str, payload: dict[str, Any],
                        timeout: float | None = None) -> Any: ...

__all__ = ["Ref"]


class Ref:
    """An object kept in a worker (and in a session, when made in one).

    Attributes:
        id: its name in the worker's object store.
        type: the object's type, ``module.QualName``.
        repr: a short ``repr`` of it, for logs and debugging.
        worker: the worker slot that holds it; ``pid``: that worker's process.
        session_id: the session it belongs to, or ``None``.
    """

    __slots__ = ("_releases", "id", "pid", "pool", "repr", "session_id", "type", "worker")

    def __init__(self, pool: RefOwner, *, id: str, type: str, repr: str, worker: str, pid: int,
                 session_id: str | None, releases: RefReleases | None = None) -> None:
        self.pool = pool
        self.id = id
        self.type = type
        self.repr = repr
        self.worker = worker
        self.pid = pid
        self.session_id = session_id
        self._releases = releases
        if releases is not None:
            releases.made((worker, pid, id))

    def __del__(self) -> None:
        releases = getattr(self, "_releases", None)
        if releases is not None:  # a counted ref: tell the worker it may free the object
            releases.dropped((self.worker, self.pid, self.id))

    def __repr__(self) -> str:
        return f"<Ref {self.id} {self.type} in {self.worker} (pid {self.pid}): {self.repr}>"

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        """Call the object itself: ``await predictor.call(question="...")``."""
        return await self.pool.invoke_on(self, "method", {"ref": self.id, "args": list(args),
                                                          "kwargs": kwargs})

    async def method(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the object's method ``name``."""
        return await self.pool.invoke_on(self, "method", {
            "ref": self.id, "name": name, "args": list(args), "kwargs": kwargs})

    async def getattr(self, name: str) -> Any:
        """The object's attribute ``name`` (a value, or another ref)."""
        return await self.pool.invoke_on(self, "getattr", {"ref": self.id, "name": name})

    async def inspect(self) -> dict[str, Any]:
        """Type, signature, doc and public attributes of the object."""
        result: dict[str, Any] = await self.pool.invoke_on(self, "inspect", {"ref": self.id})
        return result

    async def release(self) -> bool:
        """Drop the object from the worker's store now, even if other Refs to it
        remain (they then raise RefLost); True if it was there."""
        released: bool = await self.pool.invoke_on(self, "delete", {"name": self.id})
        return released


def refs_in(value: Any) -> list[Ref]:
    """Every Ref inside ``value`` (lists, tuples and dict values are searched)."""
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, list | tuple):
        return [ref for item in value for ref in refs_in(item)]
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in refs_in(item)]
    return []


def to_wire(value: Any, serializers: Sequence[Serializer]) -> Any:
    """Host values to wire data: refs become markers, plugin objects tagged maps."""
    if isinstance(value, Ref):
        return {REF_KEY: value.id}
    if isinstance(value, str | int | float | bool | bytes | type(None)):
        return value
    if type(value) not in (list, tuple, dict):  # plugin forms first, subclasses included
        for serializer in serializers:
            if serializer.claims(value):
                try:
                    return {TAG_KEY: serializer.name, "data": serializer.encode(value)}
                except Exception as exc:  # a plugin's error must not escape untyped
                    raise PayloadError(f"serializer {serializer.name!r} cannot encode this "
                                       f"{type(value).__qualname__}: {exc}") from exc
    if isinstance(value, list | tuple):
        return [to_wire(item, serializers) for item in value]
    if isinstance(value, dict):
        return {key: to_wire(item, serializers) for key, item in value.items()}
    raise PayloadError(f"{type(value).__qualname__} has no wire form (no serializer "
                       "plugin claims it)")


def from_wire(data: Any, serializers: Sequence[Serializer], pool: RefOwner, worker: str, pid: int,
              session_id: str | None, releases: RefReleases | None = None) -> Any:
    """Wire data to host values: ref markers become Refs of ``worker``, tagged maps
    objects (when a serializer for them is installed on the host). Refs of counted
    markers are counted in ``releases``, which frees their objects when they go."""
    if isinstance(data, list):
        return [from_wire(item, serializers, pool, worker, pid, session_id, releases)
                for item in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1 and REF_KEY in data and isinstance(data[REF_KEY], dict):
        marker = data[REF_KEY]
        counted = releases if marker.get("counted") and session_id is None else None
        return Ref(pool, id=marker["id"], type=marker.get("type", ""),
                   repr=marker.get("repr", ""), worker=worker, pid=pid, session_id=session_id,
                   releases=counted)
    if is_tagged(data):
        return decode_tagged(data, serializers)
    return {key: from_wire(item, serializers, pool, worker, pid, session_id, releases)
            for key, item in data.items()}
