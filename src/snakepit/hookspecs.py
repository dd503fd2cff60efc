"""Hook specifications for snakepit plugins (pluggy; project name ``"snakepit"``).

A plugin is a module or object with functions marked ``@snakepit.hookspecs.hookimpl``,
registered through an entry point of its distribution in the ``snakepit`` (or
``snakepit.telemetry``) group::

    [project.entry-points.snakepit]
    my_metrics = "my_metrics.plugin"

Serializer plugins use the ``snakepit.serializers`` group instead, because workers load
them too, without pluggy (see :mod:`snakepit.bridge.hookspecs`); the host presents each
to pluggy as an implementation of :func:`snakepit_serializers`. The worker-side hooks
are documented in :mod:`snakepit.bridge.hookspecs`.
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


@hookspec
def snakepit_serializers() -> list[Any]:
    """Called when a pool encodes arguments for, or decodes results of, ``pool.call``.

    Return a list of serializer objects (see
    :class:`snakepit.bridge.hookspecs.Serializer`): the host side of the framework
    objects the plugin carries. Every implementation's lists are concatenated; the
    first serializer that claims a value encodes it.
    """
    raise NotImplementedError  # a specification: plugins implement it


@hookspec
def snakepit_adapters() -> list[Any]:
    """Called when a pool starts, to find the adapter its ``PoolConfig.adapter`` names.

    Return a list of adapters (see :class:`snakepit.adapters.Adapter`): objects with a
    ``name``, the ``codecs`` their workers speak, and ``launch(config, worker_id)``
    returning a :class:`snakepit.adapters.LaunchSpec`. Lists are concatenated.
    """
    raise NotImplementedError  # a specification: plugins implement it


@hookspec
def snakepit_pool_kinds() -> list[Any]:
    """Called when a pool starts, to find the kind its ``PoolConfig.kind`` names.

    Return a list of pool kinds (see :class:`snakepit.kinds.PoolKind`): objects with a
    ``name`` and ``prepare(config)`` returning a runtime that picks each worker's
    environment and hears of each worker's exit. Lists are concatenated.
    """
    raise NotImplementedError  # a specification: plugins implement it
