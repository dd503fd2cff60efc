"""The plugin manager: pluggy, with plugins found through ``snakepit.*`` entry points.

Groups (each an ``[project.entry-points."<group>"]`` table in a plugin's pyproject):

- ``snakepit``, ``snakepit.telemetry``: pluggy plugins implementing any hook of
  :mod:`snakepit.hookspecs` (telemetry listeners, for one);
- ``snakepit.serializers``: a module (or object) with a ``SERIALIZERS`` sequence (see
  :mod:`snakepit.bridge.hookspecs`); it is loaded in workers too, without pluggy, so the
  host wraps it in a plugin that implements ``snakepit_serializers``.

Plugins are loaded once per process, on first use. A plugin that fails to import is
logged, listed by ``snakepit plugins`` with its error, and skipped: a broken plugin
never takes a pool down.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from snakepit import hookspecs
from snakepit.bridge.arrays import BUILTIN_SERIALIZERS

log = logging.getLogger("snakepit.plugins")

PLUGIN_GROUPS = ("snakepit", "snakepit.telemetry")
SERIALIZER_GROUP = "snakepit.serializers"
# groups whose entry points name a module with a list attribute, wrapped for pluggy
LIST_GROUPS = {"snakepit.serializers": ("SERIALIZERS", "snakepit_serializers"),
               "snakepit.adapters": ("ADAPTERS", "snakepit_adapters"),
               "snakepit.pool_kinds": ("POOL_KINDS", "snakepit_pool_kinds")}


@attrs.frozen
class PluginInfo:
    """One entry point, as ``snakepit plugins`` shows it."""

    name: str
    group: str
    distribution: str
    version: str
    value: str
    hooks: tuple[str, ...] = ()
    error: str | None = None


def _list_plugin(group: str, provided: Any) -> object:
    """Presents a module of a list group to pluggy as an implementation of its hook."""
    attribute, hook = LIST_GROUPS[group]
    items = list(getattr(provided, attribute, provided))

    def implementation() -> list[Any]:
        return items

    implementation.__name__ = hook
    plugin = type(f"{attribute.title()}Plugin", (), {hook: staticmethod(
        hookspecs.hookimpl(implementation))})
    return plugin()


_infos: list[PluginInfo] = []


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every installed plugin registered."""
    manager = pluggy.PluginManager("snakepit")
    manager.add_hookspecs(hookspecs)
    for group in (*PLUGIN_GROUPS, *LIST_GROUPS):
        for entry_point in importlib.metadata.entry_points(group=group):
            dist = entry_point.dist
            distribution = dist.name if dist else "?"
            version = dist.version if dist else "?"
            try:
                plugin = entry_point.load()
                if group in LIST_GROUPS:
                    plugin = _list_plugin(group, plugin)
                manager.register(plugin, name=f"{group}:{entry_point.name}")
            except Exception as exc:
                log.exception("snakepit plugin %r (%s) failed to load; skipped",
                              entry_point.name, entry_point.value)
                _infos.append(PluginInfo(entry_point.name, group, distribution, version,
                                         entry_point.value, error=repr(exc)))
                continue
            hooks = tuple(sorted(caller.name for caller in manager.get_hookcallers(plugin)
                                 or ()))
            _infos.append(PluginInfo(entry_point.name, group, distribution, version,
                                     entry_point.value, hooks=hooks))
    _connect_telemetry(manager)
    return manager


def installed_plugins() -> list[PluginInfo]:
    """Every plugin entry point found (those that failed to load included)."""
    plugin_manager()
    return list(_infos)


def not_found(what: str, name: str, group: str, installed: Iterable[str]) -> str:
    """The message for a ``what`` (``"adapter"``, ``"pool kind"``) named ``name`` that
    no loaded plugin provides: a plugin of ``group`` that failed to load is named with
    why (its entry point of that name first), rather than leaving the reader to guess
    that ``name`` was misspelt."""
    failed = sorted((info for info in installed_plugins()
                     if info.group == group and info.error is not None),
                    key=lambda info: info.name != name)
    message = f"no {what} named {name!r}; installed: {', '.join(sorted(installed))}"
    if failed:
        message += "; " + "; ".join(
            f"plugin {info.name!r} ({info.distribution} {info.version}, {info.value}) "
            f"failed to load: {info.error}" for info in failed)
        if failed[0].name == name:
            message = (f"the plugin that provides {what} {name!r} failed to load "
                       f"({failed[0].distribution} {failed[0].version}, "
                       f"{failed[0].value}): {failed[0].error}")
    return message


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
        _connected[id(impl)] = telemetry.attach("*", _HookHandler(impl.plugin_name,
                                                                  impl.function))


class _HookHandler:
    """One plugin's ``snakepit_telemetry_event`` as a telemetry handler, named after
    the plugin: telemetry's log line for a handler that raised is then about the
    plugin (``snakepit.telemetry:prometheus``), not an internal function."""

    __slots__ = ("function", "plugin")

    def __init__(self, plugin: str, function: Any) -> None:
        self.plugin = plugin
        self.function = function

    def __call__(self, event: str, measurements: Any, metadata: Any) -> None:
        self.function(event=event, measurements=measurements, metadata=metadata)

    def __repr__(self) -> str:
        module = getattr(self.function, "__module__", "?")
        return (f"<snakepit plugin {self.plugin!r} ({module}."
                f"{getattr(self.function, '__qualname__', '?')})>")


def host_serializers() -> list[Any]:
    """Serializers from the ``snakepit.serializers`` entry points and the
    ``snakepit_serializers`` hook, for values crossing the wire on the host side, then
    snakepit's own (numpy arrays: :mod:`snakepit.bridge.arrays`) unless a plugin
    provides one of the same name."""
    found: list[Any] = []
    for provided in plugin_manager().hook.snakepit_serializers():
        found.extend(provided)
    names = {serializer.name for serializer in found}
    return found + [s for s in BUILTIN_SERIALIZERS if s.name not in names]


def plugin_adapters() -> list[Any]:
    """Adapters installed by plugins (``snakepit.adapters``, ``snakepit_adapters``)."""
    return [a for provided in plugin_manager().hook.snakepit_adapters() for a in provided]


def plugin_pool_kinds() -> list[Any]:
    """Pool kinds installed by plugins (``snakepit.pool_kinds``, ``snakepit_pool_kinds``)."""
    return [k for provided in plugin_manager().hook.snakepit_pool_kinds() for k in provided]
