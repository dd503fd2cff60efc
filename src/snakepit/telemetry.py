"""Telemetry: named events with measurements and metadata, for anyone who listens.

Modelled on Erlang's ``:telemetry``, which the system snakepit rebuilds used: the pool
*emits* events; handlers *attach* to the names they care about. With nobody attached
an event costs one dictionary lookup, so events sit on the hot path freely.

::

    def log_slow_calls(event, measurements, metadata):
        if measurements["duration"] > 1.0:
            print(metadata["pool"], metadata["command"], measurements["duration"])

    snakepit.telemetry.attach("call.stop", log_slow_calls)

A handler runs synchronously in the task that emitted the event, so it must be quick
and must not block. A handler that raises is detached and logged: telemetry never
breaks a call. Plugins can listen too, through the ``snakepit_telemetry_event`` hook
(:mod:`snakepit.hookspecs`). Every event is documented in ``docs/telemetry.md``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from snakepit.protocol.events import check_event

__all__ = ["CANCELLED_ERRORS", "EVENTS", "MAX_COMMAND_LABELS", "OTHER_COMMANDS",
           "UNKNOWN_COMMAND", "CommandLabels", "Handler", "Telemetry", "attach", "detach",
           "emit", "enabled", "telemetry"]

log = logging.getLogger("snakepit.telemetry")

Handler = Callable[[str, Mapping[str, float], Mapping[str, Any]], None]

#: Every event snakepit emits, with what it means.
EVENTS: dict[str, str] = {
    "pool.started": "a pool finished starting all its workers",
    "pool.stopped": "a pool has shut down and every worker has exited",
    "pool.drained": "an operator drained the pool: new calls are refused until it resumes",
    "pool.resumed": "a drained pool takes calls again",
    "pool.health": "periodic pool health: available, busy, total workers and restarts",
    "pool.broken": "every slot failed past its restart intensity: calls get PoolBroken",
    "pool.recovered": "a broken pool has a worker ready again after a cool-down",
    "slot.failed": "a slot passed its restart intensity and runs no worker (until cool-down)",
    "worker.started": "a worker process was spawned",
    "worker.ready": "a worker completed its handshake and takes calls",
    "worker.exited": "a worker process exited (for any reason)",
    "worker.restarted": "a slot is starting a replacement worker",
    "worker.unhealthy": "a worker missed a health check or its memory limit",
    "worker.info": "per-worker facts from the pool kind (a GPU's memory), each health round",
    "worker.stats": "per-worker resident memory, calls in flight and served, each health round",
    "worker.setup_failed": "a new worker failed a set-up command (pool.setup) and was killed",
    "worker.<event>": "a handler's own event, sent with ctx.emit(event, ...) (docs/host-tools.md)",
    "call.start": "a call was submitted",
    "call.stop": "a call returned a result",
    "call.exception": "a call raised",
    "call.progress": "a handler reported progress for a call",
    "call.retry": "a failed attempt of a call will be retried after a delay",
    "circuit.changed": "a circuit breaker changed state (closed, open, half_open)",
    "session.created": "a session was created",
    "session.expired": "a session passed its TTL unused and was removed",
    "session.deleted": "a session was deleted by the application",
}


#: ``error`` names of ``call.exception`` that mean the caller cancelled the call (a client
#: that went away, a cancel scope around it): not a failure of the pool. ``stats()``
#: counts these calls in ``cancelled``, not ``failed``; exporters label them apart.
CANCELLED_ERRORS = frozenset({"Cancelled", "CallCancelled"})


class Telemetry:
    """A registry of handlers by event name (``"*"`` attaches to every event)."""

    def __init__(self) -> None:
        self._handlers: dict[str, dict[int, Handler]] = {}
        self._ids = itertools.count(1)

    def attach(self, events: str | Iterable[str], handler: Handler) -> int:
        """Call ``handler(event, measurements, metadata)`` for each of ``events``.

        Returns an id for :meth:`detach`.

        Raises:
            ValueError: an event name snakepit never emits (a typo would otherwise
                silently attach to nothing).
        """
        names = [events] if isinstance(events, str) else list(events)
        unknown = [name for name in names if name != "*" and name not in EVENTS
                   and not is_worker_event(name)]
        if unknown:
            raise ValueError(f"unknown telemetry events {unknown}; see snakepit.telemetry.EVENTS")
        handler_id = next(self._ids)
        for name in names:
            self._handlers.setdefault(name, {})[handler_id] = handler
        return handler_id

    def detach(self, handler_id: int) -> None:
        """Stop calling the handler attached under ``handler_id`` (no error if gone)."""
        for name in list(self._handlers):
            self._handlers[name].pop(handler_id, None)
            if not self._handlers[name]:
                del self._handlers[name]

    def handler_ids(self) -> set[int]:
        """Ids of every attached handler."""
        return {handler_id for handlers in self._handlers.values() for handler_id in handlers}

    def enabled(self, event: str) -> bool:
        """Whether anyone listens to ``event``: skip building its payload otherwise."""
        handlers = self._handlers
        return event in handlers or "*" in handlers

    def emit(self, event: str, measurements: Mapping[str, float],
             metadata: Mapping[str, Any]) -> None:
        """Deliver an event to its handlers; a handler that raises is detached."""
        handlers = self._handlers
        targets = [*handlers.get(event, {}).items(), *handlers.get("*", {}).items()]
        for handler_id, handler in targets:
            try:
                handler(event, measurements, metadata)
            except Exception:
                log.exception("telemetry handler %r raised on %s; detached", handler, event)
                self.detach(handler_id)


def is_worker_event(name: str) -> bool:
    """Whether ``name`` is ``worker.<event>`` for an event a handler may ``ctx.emit``."""
    prefix, _, event = name.partition(".")
    return prefix == "worker" and check_event(event, None, None) is None


telemetry = Telemetry()
"""The process-wide registry every pool emits to."""

attach = telemetry.attach
detach = telemetry.detach
emit = telemetry.emit
enabled = telemetry.enabled


MAX_COMMAND_LABELS = 100
"""Distinct command names a metrics exporter labels per pool, by default."""
UNKNOWN_COMMAND = "<unknown>"
"""The one label of every call the worker refused as an unknown command."""
OTHER_COMMANDS = "<other>"
"""The label of commands past the cap."""


class CommandLabels:
    """Bounded label values for command names, for metrics exporters.

    Command names come from callers: a label per name would let a client that sends
    random names (a typo in a loop, a scanner) create series without end, each kept
    for the life of the process. Calls refused with ``UnknownCommand`` share
    :data:`UNKNOWN_COMMAND`; the first ``max_commands`` other names of a pool keep
    their own label, and later ones share :data:`OTHER_COMMANDS`. A name is admitted
    only by a call that ended without ``UnknownCommand``, so refused names never use up
    the cap.
    """

    def __init__(self, max_commands: int = MAX_COMMAND_LABELS) -> None:
        self.max_commands = max_commands
        self._admitted: dict[object, set[str]] = {}

    def label(self, pool: object, command: str, error: str | None = None) -> str:
        """The label of a finished call of ``command`` (``error``: the class name of
        what it raised, if it did), admitting the name while the pool has room."""
        if error == "UnknownCommand":
            return UNKNOWN_COMMAND
        admitted = self._admitted.setdefault(pool, set())
        if command in admitted:
            return command
        if len(admitted) < self.max_commands:
            admitted.add(command)
            return command
        return OTHER_COMMANDS

    def peek(self, pool: object, command: str) -> str:
        """The label ``command`` would have now, admitting nothing (for a call that has
        not ended: it may yet be refused as unknown)."""
        admitted = self._admitted.get(pool, set())
        if command in admitted or len(admitted) < self.max_commands:
            return command
        return OTHER_COMMANDS
