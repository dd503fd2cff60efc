"""Adapters: how a pool starts its workers (executable, arguments, environment).

Built in: ``python`` (the snakepit bridge under ``PoolConfig.python``) and ``command``
(any executable that speaks the wire protocol, from ``PoolConfig.command``). Others come
from plugins: an entry point in the ``snakepit.adapters`` group naming a module (or
object) with an ``ADAPTERS`` list, or a pluggy plugin implementing
``snakepit_adapters``. The seam is deliberately small -- an argv, an environment and the
codecs spoken -- so the pool never cares what language a worker is written in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from snakepit.config import PoolConfig
from snakepit.errors import ConfigError
from snakepit.process.launch import bridge_pythonpath, python_argv

__all__ = ["Adapter", "CommandAdapter", "LaunchSpec", "PythonAdapter", "find_adapter"]


@attrs.frozen
class LaunchSpec:
    """What to execute for one worker."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = attrs.field(factory=dict)
    """Variables added to the worker's environment (over the host's and the pool's)."""
    cwd: str | None = None


class Adapter(Protocol):
    """Starts workers of one kind of runtime."""

    name: str
    """The name ``PoolConfig.adapter`` selects it by."""
    codecs: tuple[str, ...]
    """Codecs its workers speak, most preferred first."""

    def launch(self, config: PoolConfig, worker_id: str) -> LaunchSpec:
        """The command for worker ``worker_id`` of a pool with ``config``.

        Raises:
            ConfigError: ``config`` (e.g. its ``options``) does not suit this adapter.
        """
        ...


class PythonAdapter:
    """The snakepit bridge, serving ``config.handler`` under ``config.python``."""

    name = "python"
    codecs = ("msgpack", "json")

    def launch(self, config: PoolConfig, worker_id: str) -> LaunchSpec:
        env: dict[str, str] = {}
        extra = bridge_pythonpath(config.python)
        if extra is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (extra, config.env.get("PYTHONPATH", os.environ.get("PYTHONPATH")))
                if p)
        return LaunchSpec(tuple(python_argv(config.python, config.handler, config.preload)),
                          env, config.cwd)


class CommandAdapter:
    """Any executable that speaks the wire protocol: ``config.command``."""

    name = "command"
    codecs = ("msgpack", "json")

    def launch(self, config: PoolConfig, worker_id: str) -> LaunchSpec:
        if config.command is None:
            raise ConfigError(["command: the command adapter needs a command"])
        return LaunchSpec(tuple(config.command), {}, config.cwd)


BUILT_IN: dict[str, Any] = {"python": PythonAdapter(), "command": CommandAdapter()}


def find_adapter(config: PoolConfig) -> Adapter:
    """The adapter ``config`` names (``command`` when ``config.command`` is set).

    Raises:
        ConfigError: no installed adapter has that name.
    """
    from snakepit.plugins import plugin_adapters

    name = "command" if config.command is not None and config.adapter == "python" else (
        config.adapter)
    adapters = {**BUILT_IN, **{a.name: a for a in plugin_adapters()}}
    if name not in adapters:
        raise ConfigError([f"adapter: no adapter named {name!r}; installed: "
                           f"{', '.join(sorted(adapters))}"])
    adapter: Adapter = adapters[name]
    return adapter
