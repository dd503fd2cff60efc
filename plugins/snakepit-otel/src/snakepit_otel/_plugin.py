"""The pluggy plugin that the ``snakepit.telemetry`` entry point names.

snakepit attaches :func:`snakepit_telemetry_event` as a telemetry handler when its
first pool opens; it runs synchronously in the Trio task that emitted each event (for
``call.start``, the caller's own task: that is what makes the caller's span the parent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from snakepit.hookspecs import hookimpl
from snakepit_otel._providers import providers
from snakepit_otel._spans import CallSpans

calls = CallSpans(providers)
"""The process-wide table of open call spans."""


@hookimpl
def snakepit_telemetry_event(event: str, measurements: Mapping[str, float],
                             metadata: Mapping[str, Any]) -> None:
    """Open, annotate and end call spans; record call metrics."""
    if event == "call.start":
        calls.start(measurements, metadata)
    elif event == "call.stop":
        calls.end(measurements, metadata, None)
    elif event == "call.exception":
        calls.end(measurements, metadata, str(metadata.get("error")))
    elif event == "call.retry":
        calls.retry(measurements, metadata)
