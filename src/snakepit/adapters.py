"""Adapters: how a pool starts its workers (executable, arguments, environment).

Built in: ``python`` (the snakepit bridge under ``PoolConfig.python``) and ``command``
(any executable that speaks the wire protocol, from ``PoolConfig.command``). Others come
from plugins: an entry point in the ``snakepit.adapters`` group naming a module (or
object) with an ``ADAPTERS`` list, or a pluggy plugin implementing
``snakepit_adapters``. The seam is deliberately small -- an argv, an environment and the
codecs spoken -- so the pool never cares what language a worker is written in.

Where a worker runs is a second, optional seam: ``LaunchSpec.open``. Left ``None``, the
pool spawns the argv as a local child on pipes; set (by an adapter, or by a pool kind
such as ``ray``), the pool awaits it instead and speaks the same frames over whatever
pair of byte streams the :class:`~snakepit.process.launch.WorkerProcess` it returns
holds (a TCP socket to another machine, say).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs

from snakepit.config import PoolConfig
from snakepit.errors import ConfigError
from snakepit.process.launch import (
    WorkerProcess,
    bridge_pythonpath,
    python_argv,
    resolve_python,
    virtualenv_of,
)

__all__ = ["Adapter", "CommandAdapter", "LaunchSpec", "Opener", "PythonAdapter",
           "WorkerProcess", "find_adapter"]

Opener = Callable[[PoolConfig, str, "LaunchSpec", Mapping[str, str]], Awaitable[WorkerProcess]]
"""``open(config, worker_id, spec, env)``: start the worker ``spec`` describes somewhere
and return the host's handle on it, its wire connected but no frame sent yet. ``env``
holds what snakepit adds to a worker's environment (the pool's ``env``, the adapter's,
the kind's, ``SNAKEPIT_RUN_ID``...) but not the host's own environment, which another
machine should not inherit. Raises ``WorkerStartupError`` when the worker cannot be
started; cancelled, it must leave nothing running."""


@attrs.frozen
class LaunchSpec:
    """What to execute for one worker."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = attrs.field(factory=dict)
    """Variables added to the worker's environment (over the host's and the pool's)."""
    cwd: str | None = None
    open: Opener | None = None
    """How to start it, when not as a local child process on pipes (the default):
    an :data:`Opener`. Processes it starts are not in the host's run registry, so the
    opener must see to it that none outlives the host."""


class Adapter(Protocol):
    """Starts workers of one kind of runtime.

    ``launch`` runs on the event loop before every spawn: it must be quick (no
    installs, no network). Slow set-up -- installing its runtime's dependencies, say --
    goes in :meth:`prepare`. Subclass :class:`BaseAdapter` to inherit the no-op
    ``prepare``; an adapter that does not is completed by :func:`find_adapter`.
    """

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

    async def prepare(self, config: PoolConfig) -> None:
        """Slow set-up, awaited once as the pool starts, before any worker; blocking work
        belongs in a thread (``trio.to_thread.run_sync``).

        Raises:
            ConfigError: fails the pool start.
        """
        ...


class BaseAdapter:
    """The optional parts of an :class:`Adapter`, as no-ops: subclass it."""

    async def prepare(self, config: PoolConfig) -> None:
        """Nothing to set up."""


class _Completed(BaseAdapter):
    """A plugin's adapter that does not subclass :class:`BaseAdapter`, with the optional
    methods it lacks filled in (so the pool calls them directly)."""

    def __init__(self, adapter: Any) -> None:
        self._adapter = adapter
        self.name: str = adapter.name
        self.codecs: tuple[str, ...] = tuple(adapter.codecs)
        self._prepare = adapter.prepare if hasattr(adapter, "prepare") else None

    def launch(self, config: PoolConfig, worker_id: str) -> LaunchSpec:
        spec: LaunchSpec = self._adapter.launch(config, worker_id)
        return spec

    async def prepare(self, config: PoolConfig) -> None:
        if self._prepare is not None:
            await self._prepare(config)


class PythonAdapter(BaseAdapter):
    """The snakepit bridge, serving ``config.handler`` under ``config.python``."""

    name = "python"
    codecs = ("msgpack", "json")

    def launch(self, config: PoolConfig, worker_id: str) -> LaunchSpec:
        env: dict[str, str] = {}
        python = resolve_python(config.python)
        extra = bridge_pythonpath(python)
        if extra is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (extra, config.env.get("PYTHONPATH", os.environ.get("PYTHONPATH")))
                if p)
            venv = virtualenv_of(python)
            if venv is not None:  # as if activated: its scripts first on PATH
                env["VIRTUAL_ENV"] = venv
                env["PATH"] = os.pathsep.join(
                    p for p in (os.path.dirname(os.path.abspath(python)),
                                config.env.get("PATH", os.environ.get("PATH"))) if p)
        return LaunchSpec(tuple(python_argv(python, config.handler, config.preload)), env,
                          config.cwd)


class CommandAdapter(BaseAdapter):
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
    return adapter if isinstance(adapter, BaseAdapter) else _Completed(adapter)
