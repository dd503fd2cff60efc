"""What the control socket reports: plain data (msgpack- and JSON-ready) from a pool tree."""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from snakepit import telemetry

if TYPE_CHECKING:
    from snakepit.config import PoolConfig
    from snakepit.pool.stats import PoolStats
    from snakepit.sessions.store import SessionStore


class OperatedPool(Protocol):
    """What the control socket needs of a pool (a :class:`~snakepit.Pool`)."""

    config: PoolConfig
    sessions: SessionStore

    @property
    def name(self) -> str: ...

    @property
    def in_flight(self) -> int: ...

    def stats(self) -> PoolStats: ...

    def recycle(self, worker_id: str) -> int | None: ...

    async def wait_ready(self) -> None: ...

    def slot_worker(self, slot_id: str) -> Any: ...

    def drain(self) -> None: ...

    def resume(self) -> None: ...

# Emitted per call: far too many to keep, and the stats already count them.
_NOISY = {"call.start", "call.stop", "call.progress"}
RECENT_EVENTS = tuple(sorted(set(telemetry.EVENTS) - _NOISY))
"""The events the control socket keeps a window of (every event but per-call ones)."""


def _plain(value: Any) -> Any:
    """``value`` with anything msgpack/JSON cannot carry turned into its ``repr``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return repr(value)


def pool_snapshot(pool: OperatedPool) -> dict[str, Any]:
    """One pool's stats and settings as plain data."""
    stats = attrs.asdict(pool.stats(), recurse=True)
    config = pool.config
    stats["config"] = {"size": config.size, "kind": config.kind, "adapter": config.adapter,
                       "call_timeout": config.call_timeout, "max_queue": config.max_queue}
    return _plain(stats)  # type: ignore[no-any-return]


class EventLog:
    """The latest telemetry events of some pools, numbered so a viewer can ask for new ones."""

    def __init__(self, pools: Iterable[str], size: int = 256) -> None:
        self._pools = set(pools)
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._numbers = itertools.count(1)
        self._handler: int | None = None

    def __enter__(self) -> EventLog:
        if self._pools:  # with no pool to serve, attach nothing: events stay free
            self._handler = telemetry.attach(RECENT_EVENTS, self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handler is not None:
            telemetry.detach(self._handler)
            self._handler = None

    def _record(self, event: str, measurements: Mapping[str, float],
                metadata: Mapping[str, Any]) -> None:
        if metadata.get("pool") not in self._pools:
            return
        self._events.append({"seq": next(self._numbers), "time": time.time(),
                             "event": event, "measurements": _plain(measurements),
                             "metadata": _plain(metadata)})

    def since(self, seq: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        """The events numbered above ``seq``, the latest ``limit`` of them."""
        newer = [event for event in self._events if event["seq"] > seq]
        return newer[-limit:]
