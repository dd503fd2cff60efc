"""The pluggy plugin that the ``snakepit.telemetry`` entry point names.

snakepit attaches :func:`snakepit_telemetry_event` as a telemetry handler when its
first pool opens; it runs synchronously in the Trio task that emitted each event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from snakepit.hookspecs import hookimpl
from snakepit_prometheus import _server
from snakepit_prometheus._metrics import metrics


@hookimpl
def snakepit_telemetry_event(event: str, measurements: Mapping[str, float],
                             metadata: Mapping[str, Any]) -> None:
    """Update the metrics; on the first event, start the server the environment asks
    for (if any)."""
    if not _server._environment_read:
        _server.serve_from_environment()
    metrics.observe(event, measurements, metadata)
