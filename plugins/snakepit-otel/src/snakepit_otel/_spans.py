"""A span per call, paired by the ``call`` id of the ``call.*`` events.

``call.start`` runs in the caller's task, so the call span's parent is whatever span is
current there (the application's request, say). Its end comes from ``call.stop`` or
``call.exception`` (the same task, later), which know how long the call waited for a
worker: the ``snakepit.queue`` and ``snakepit.execute`` children are then made with
explicit start and end times. Timestamps are the wall clock (``time.time_ns``, which
tracing backends expect); the split between queue and execution is the pool's own
``queue_wait``, measured on Trio's clock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import attrs
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from snakepit.telemetry import CANCELLED_ERRORS
from snakepit_otel._providers import Providers

__all__ = ["CallSpans"]


@attrs.define
class _OpenCall:
    span: trace.Span
    started: int
    """Wall-clock nanoseconds at ``call.start``."""
    label: str
    """The command's label in the span's name when it started."""


class CallSpans:
    """The spans of calls in progress, and the metrics of finished calls."""

    def __init__(self, providers: Providers) -> None:
        self.providers = providers
        self._open: dict[object, _OpenCall] = {}  # by call id, oldest first

    def open_calls(self) -> int:
        """Call spans waiting for their call's end."""
        return len(self._open)

    def start(self, measurements: Mapping[str, float], metadata: Mapping[str, Any]) -> None:
        """``call.start``: open the call's span, a child of the caller's current span."""
        pool, command = str(metadata.get("pool")), str(metadata.get("command"))
        # bounded, but not yet admitted: the worker may still refuse the name
        label = self.providers.commands.peek(pool, command)
        attributes: dict[str, Any] = {
            "snakepit.pool": pool, "snakepit.command": label,
            "snakepit.call.id": int(metadata.get("call", 0)),
            "snakepit.queue_depth": int(measurements.get("queue_depth", 0))}
        if label != command:
            attributes["snakepit.command.requested"] = command
        if metadata.get("stream"):
            attributes["snakepit.stream"] = True
        started = time.time_ns()
        span = self.providers.tracer().start_span(f"snakepit.call {label}",
                                                  attributes=attributes, start_time=started)
        if not span.is_recording():  # no SDK, or sampled out: nothing to finish later
            return
        self._open[metadata.get("call")] = _OpenCall(span, started, label)
        while len(self._open) > self.providers.max_open_spans:
            self._evict_oldest()

    def retry(self, measurements: Mapping[str, float], metadata: Mapping[str, Any]) -> None:
        """``call.retry``: an event on the call's span."""
        record = self._open.get(metadata.get("call"))
        if record is not None:
            record.span.add_event("snakepit.retry", {
                "snakepit.attempt": int(measurements.get("attempt", 0)),
                "snakepit.delay": float(measurements.get("delay", 0.0)),
                "error.type": str(metadata.get("error"))})

    def end(self, measurements: Mapping[str, float], metadata: Mapping[str, Any],
            error: str | None) -> None:
        """``call.stop`` (``error`` None) or ``call.exception``: the children, then the
        end of the call's span; the metrics of the call in any case. A call its caller
        cancelled is no error: its span keeps status UNSET and says
        ``snakepit.cancelled``."""
        cancelled = error in CANCELLED_ERRORS
        if cancelled:
            error = None
        pool, command = str(metadata.get("pool")), str(metadata.get("command"))
        label = self.providers.commands.label(pool, command, error)
        queue_wait = float(measurements.get("queue_wait", 0.0))
        self._measure(pool, label, "cancelled" if cancelled else error,
                      float(measurements.get("duration", 0.0)), queue_wait)
        record = self._open.pop(metadata.get("call"), None)
        if record is None:  # not recording, evicted, or started before the plugin loaded
            return
        ended = time.time_ns()
        span, worker = record.span, metadata.get("worker")
        if label != record.label:  # refused as unknown, or the cap filled meanwhile
            span.update_name(f"snakepit.call {label}")
            span.set_attribute("snakepit.command", label)
            span.set_attribute("snakepit.command.requested", command)
        # a call that never reached a worker only queued (its queue_wait is its duration)
        queued_until = (ended if worker is None
                        else min(record.started + int(queue_wait * 1e9), ended))
        span.set_attribute("snakepit.queue_wait", queue_wait)
        span.set_attribute("snakepit.attempts", int(measurements.get("attempts", 1)))
        if worker is not None:
            span.set_attribute("snakepit.worker", str(worker))
        if cancelled:
            span.set_attribute("snakepit.cancelled", True)
        if "chunks" in measurements:
            span.set_attribute("snakepit.chunks", int(measurements["chunks"]))
        tracer = self.providers.tracer()
        parent = trace.set_span_in_context(span)
        tracer.start_span("snakepit.queue", context=parent,
                          start_time=record.started).end(end_time=queued_until)
        if worker is not None:
            execute = tracer.start_span("snakepit.execute", context=parent, kind=SpanKind.CLIENT,
                                        attributes={"snakepit.worker": str(worker)},
                                        start_time=queued_until)
            if error is not None:
                execute.set_status(Status(StatusCode.ERROR, error))
            execute.end(end_time=ended)
        if error is not None:
            span.set_attribute("error.type", error)
            span.add_event("exception", {"exception.type": error}, timestamp=ended)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=ended)

    def _measure(self, pool: str, command: str, error: str | None, duration: float,
                 queue_wait: float) -> None:
        """``error``: the class name, ``"cancelled"`` for a cancelled call, or None."""
        instruments = self.providers.instruments()
        outcome = "ok" if error is None else "cancelled" if error == "cancelled" else "error"
        attributes = {"snakepit.pool": pool, "snakepit.command": command,
                      "snakepit.outcome": outcome}
        if outcome == "error":
            assert error is not None
            attributes["error.type"] = error
        instruments.calls.add(1, attributes)
        instruments.duration.record(duration, attributes)
        instruments.queue_wait.record(queue_wait, attributes)

    def _evict_oldest(self) -> None:
        """End the oldest open span now, marked incomplete: its end may never come."""
        record = self._open.pop(next(iter(self._open)))
        record.span.set_attribute("snakepit.incomplete", True)
        record.span.end()
