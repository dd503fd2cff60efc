"""Hook specifications for snakepit plugins (pluggy; project name ``"snakepit"``).

A plugin is a module or object with functions marked ``@snakepit.hookspecs.hookimpl``,
registered through the ``snakepit`` entry-point group of its distribution::

    [project.entry-points.snakepit]
    my_metrics = "my_metrics.plugin"

The plugins issue adds adapter, serializer and pool-kind hooks here; this module starts
with the telemetry hook.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("snakepit")
hookimpl = pluggy.HookimplMarker("snakepit")


@hookspec
def snakepit_telemetry_event(event: str, measurements: Mapping[str, float],
                             metadata: Mapping[str, Any]) -> None:
    """Called for every telemetry event any pool emits (see ``snakepit.telemetry.EVENTS``).

    Args:
        event: the event's name, e.g. ``"call.stop"``.
        measurements: numbers (durations in seconds, counts).
        metadata: context (pool name, worker id, command, error type...).

    Runs synchronously in the emitting task: be quick, never block. An implementation
    that raises is detached from telemetry (that one alone) and logged. Every
    implementation is called; return values are ignored.
    """
