"""The plugin manager: pluggy, with plugins found through the ``snakepit`` entry points.

Plugins are loaded once per process, on first use. A plugin that fails to import is
logged and skipped: a broken plugin never takes a pool down.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from typing import Any

import pluggy

from snakepit import hookspecs

log = logging.getLogger("snakepit.plugins")

ENTRY_POINT_GROUP = "snakepit"


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every installed plugin registered."""
    manager = pluggy.PluginManager("snakepit")
    manager.add_hookspecs(hookspecs)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = entry_point.load()
            manager.register(plugin, name=entry_point.name)
        except Exception:
            log.exception("snakepit plugin %r (%s) failed to load; skipped",
                          entry_point.name, entry_point.value)
    _connect_telemetry(manager)
    return manager


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin object by hand (as an entry point would) and connect its hooks."""
    manager = plugin_manager()
    manager.register(plugin, name=name)
    _connect_telemetry(manager)


def unregister_plugin(plugin: object) -> None:
    """Undo :func:`register_plugin`: the plugin hears no more events."""
    from snakepit import telemetry

    manager = plugin_manager()
    for impl in manager.hook.snakepit_telemetry_event.get_hookimpls():
        if impl.plugin is plugin and id(impl) in _connected:
            telemetry.detach(_connected.pop(id(impl)))
    manager.unregister(plugin)


_connected: dict[int, int] = {}  # id(hook implementation) -> telemetry handler id


def _connect_telemetry(manager: pluggy.PluginManager) -> None:
    """Attach each plugin's ``snakepit_telemetry_event`` as its own telemetry handler.

    One handler per plugin, so a plugin that raises is detached alone; until some
    plugin implements the hook, events with no other listener stay free.
    """
    from snakepit import telemetry

    attached = telemetry.telemetry.handler_ids()
    for impl in manager.hook.snakepit_telemetry_event.get_hookimpls():
        if _connected.get(id(impl)) in attached:
            continue

        def deliver(event: str, measurements: Any, metadata: Any,
                    function: Any = impl.function) -> None:
            function(event=event, measurements=measurements, metadata=metadata)

        _connected[id(impl)] = telemetry.attach("*", deliver)
