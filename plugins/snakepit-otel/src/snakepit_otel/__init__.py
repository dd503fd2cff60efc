"""snakepit telemetry for OpenTelemetry: a span per call, and call metrics.

Installed, the plugin hears every telemetry event through the ``snakepit.telemetry``
entry point. Each call becomes a span ``snakepit.call <command>``, a child of the span
current where the call was made, with the children ``snakepit.queue`` (waiting for a
worker) and ``snakepit.execute`` (on the worker); a failed call's span has status
ERROR and an ``exception`` event (a call its caller cancelled is no failure: status
UNSET, ``snakepit.cancelled``). The metrics ``snakepit.calls``,
``snakepit.call.duration`` and ``snakepit.call.queue_wait`` go through the metrics API.

Only ``opentelemetry-api`` is needed: spans and metrics go to the providers the
application sets (the SDK's, with the exporters it chooses), looked up at each call, so
a provider set after snakepit started is used from then on. :func:`configure` names
providers explicitly instead.
"""

from __future__ import annotations

from snakepit_otel._providers import (
    DURATION_BUCKETS,
    MAX_COMMAND_LABELS,
    MAX_OPEN_SPANS,
    SCOPE,
    configure,
)

__all__ = ["DURATION_BUCKETS", "MAX_COMMAND_LABELS", "MAX_OPEN_SPANS", "SCOPE", "configure",
           "open_calls"]


def open_calls() -> int:
    """Call spans waiting for their call's end (bounded by ``max_open_spans``)."""
    from snakepit_otel._plugin import calls

    return calls.open_calls()
