"""The ``ray`` pool kind: its options, and the runtime that places each worker of a
pool in a Ray actor of its own (:class:`~snakepit_ray.actor.SnakepitWorker`), connects
to it over the authenticated channel and hands the slot a
:class:`~snakepit_ray.handle.RayWorker`.

Ray's API is only ever called through :func:`~snakepit_ray.driver.ray_call`; see
:mod:`snakepit_ray.driver` for why.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Callable, Mapping
from typing import Any

import trio

from snakepit.adapters import LaunchSpec, Opener
from snakepit.config import PoolConfig
from snakepit.errors import ConfigError, WorkerStartupError
from snakepit.kinds import BaseRuntime
from snakepit_ray import actor as actor_module
from snakepit_ray.channel import open_channel, read_started
from snakepit_ray.driver import connect, kill_actor, ray_call, wait_future
from snakepit_ray.handle import RayWorker

log = logging.getLogger("snakepit.ray")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


_OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "address": (lambda v: v is None or (isinstance(v, str) and v != ""),
                "must be 'auto', 'host:port', or absent to start a local Ray"),
    "num_cpus": (_number, "must be a number >= 0"),
    "num_gpus": (_number, "must be a number >= 0"),
    "memory": (lambda v: v is None or (_number(v) and v > 0),
               "must be a number of bytes > 0"),
    "resources": (lambda v: isinstance(v, Mapping) and all(
        isinstance(k, str) and _number(n) for k, n in v.items()),
        "must map resource names to numbers >= 0"),
    "runtime_env": (lambda v: v is None or isinstance(v, Mapping),
                    "must be a table (Ray's runtime_env)"),
    "scheduling_strategy": (lambda v: v in ("DEFAULT", "SPREAD"),
                            "must be DEFAULT or SPREAD"),
    "bind": (lambda v: v is None or (isinstance(v, str) and v != ""),
             "must be an address of the node (default: the node's own address)"),
    "python": (lambda v: v is None or (isinstance(v, str) and v != ""),
               "must be the path of the interpreter on the nodes"),
    "placement_timeout": (lambda v: _number(v) and v > 0, "must be a number > 0"),
    "init": (lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v),
             "must be a table of ray.init keyword arguments"),
}
_DEFAULTS: dict[str, Any] = {"address": None, "num_cpus": 1, "num_gpus": 0, "memory": None,
                             "resources": {}, "runtime_env": None,
                             "scheduling_strategy": "DEFAULT", "bind": None, "python": None,
                             "placement_timeout": 60.0, "init": {}}


def check_options(config: PoolConfig) -> dict[str, Any]:
    """The ``ray`` kind's options with their defaults.

    Raises:
        ConfigError: naming every bad option (and settings a Ray pool cannot honour).
    """
    errors = [f"options.{name}: unknown option for kind 'ray' (known: "
              f"{', '.join(sorted(_OPTIONS))})" for name in config.options if name not in _OPTIONS]
    options = {**_DEFAULTS, **config.options}
    errors += [f"options.{name}: {message}" for name, (check, message) in _OPTIONS.items()
               if not check(options[name])]
    if config.memory_limit is not None:
        errors.append("memory_limit: a Ray pool's workers are on other machines, out of "
                      "this host's /proc; use options.memory (Ray's resource) instead")
    if errors:
        raise ConfigError(errors)
    return options


class RayPoolKind:
    """``PoolConfig(kind="ray", options={...})``: each worker in a Ray actor."""

    name = "ray"

    def prepare(self, config: PoolConfig) -> RayRuntime:
        return RayRuntime(config, check_options(config))


_actor_class: Any = None


def actor_class() -> Any:
    """``SnakepitWorker`` as a Ray actor class (threaded: a method may block)."""
    global _actor_class
    if _actor_class is None:
        import ray

        _actor_class = ray.remote(max_concurrency=4)(  # type: ignore[call-overload]
            actor_module.SnakepitWorker)
    return _actor_class


class RayRuntime(BaseRuntime):
    """The ``ray`` kind, running for one pool: places workers, remembers where."""

    def __init__(self, config: PoolConfig, options: dict[str, Any]) -> None:
        self.config = config
        self.options = options
        self.secret = secrets.token_bytes(32)
        """This pool's secret: handed to its actors through Ray, proved on every
        connection to them."""
        self.placed: dict[str, dict[str, Any]] = {}
        self._connected = False
        self._connecting = trio.Lock()

    # -- KindRuntime (environment and exits: BaseRuntime's nothing) ------------------------
    def worker_info(self, worker_id: str) -> Mapping[str, Any]:
        return dict(self.placed.get(worker_id, {}))

    # -- placing workers -------------------------------------------------------------------
    async def ensure_connected(self) -> None:
        async with self._connecting:
            if not self._connected:
                await ray_call(connect, self.options["address"], self.options["init"])
                self._connected = True

    def actor_options(self) -> dict[str, Any]:
        options = self.options
        placement: dict[str, Any] = {
            "num_cpus": options["num_cpus"], "num_gpus": options["num_gpus"],
            "max_restarts": 0,  # a dead worker's replacement is the slot's business
            "scheduling_strategy": options["scheduling_strategy"],
        }
        if options["resources"]:
            placement["resources"] = dict(options["resources"])
        if options["memory"] is not None:
            placement["memory"] = options["memory"]
        if options["runtime_env"] is not None:
            placement["runtime_env"] = dict(options["runtime_env"])
        return placement

    def argv(self, config: PoolConfig, spec: LaunchSpec) -> tuple[list[str], bool]:
        """The command for the node, and whether its first word is to be the actor's own
        interpreter (the bridge under the pool's default ``python``)."""
        argv = list(spec.argv)
        bridge = config.adapter == "python" and config.command is None
        if bridge and self.options["python"] is not None:
            argv[0] = self.options["python"]
            return argv, False
        own = bridge and os.path.abspath(argv[0]) == os.path.abspath(sys.executable)
        return argv, own

    @property
    def opener(self) -> Opener:
        """Every worker of a ray pool is started by :meth:`open_worker`."""
        return self.open_worker

    async def open_worker(self, config: PoolConfig, worker_id: str, spec: LaunchSpec,
                          env: Mapping[str, str]) -> RayWorker:
        """Create the slot's actor, connect to it and start the worker (an Opener).

        Raises:
            WorkerStartupError: Ray could not place or start the actor in time, or the
                worker could not be started on its node.
        """
        await self.ensure_connected()
        argv, own_python = self.argv(config, spec)
        cls, options = actor_class(), self.actor_options()
        accept_timeout = config.startup_timeout + self.options["placement_timeout"]

        def create() -> Any:
            return cls.options(**options).remote(self.secret, argv, dict(env),
                                                 spec.cwd or config.cwd, own_python,
                                                 self.options["bind"], accept_timeout)

        handle = await ray_call(create)
        sockets: list[trio.socket.SocketType] = []
        try:
            address_future = await ray_call(lambda: handle.address.remote().future())
            gone_future = await ray_call(lambda: handle.wait_gone.remote().future())
            timeout = self.options["placement_timeout"]
            with trio.move_on_after(timeout) as placing:
                host, port, node_id, actor_pid, actor_id = await wait_future(address_future)
            if placing.cancelled_caught:
                raise WorkerStartupError(
                    f"worker {worker_id}: Ray placed no actor within placement_timeout "
                    f"({timeout}s); does the cluster have {options['num_cpus']} CPU, "
                    f"{options['num_gpus']} GPU and {dict(self.options['resources'])} free?")
            with trio.fail_after(config.startup_timeout):
                for role in (b"c", b"e", b"w"):
                    sockets.append(await open_channel(host, port, self.secret, role))
                pid = await read_started(sockets[0])
        except BaseException as exc:
            for sock in sockets:
                sock.close()
            with trio.CancelScope(shield=True):
                await ray_call(kill_actor, handle)
            if isinstance(exc, WorkerStartupError | trio.Cancelled):
                raise
            if isinstance(exc, trio.TooSlowError):
                raise WorkerStartupError(f"worker {worker_id}: its actor did not accept the "
                                         f"connections within startup_timeout") from None
            if isinstance(exc, Exception):
                raise WorkerStartupError(
                    f"worker {worker_id} could not start in its Ray actor: {exc}") from exc
            raise
        self.placed[worker_id] = {"ray_node": host, "ray_node_id": node_id,
                                  "ray_actor": actor_id, "actor_pid": actor_pid}
        worker = RayWorker(worker_id, handle, pid, sockets[0], sockets[1], sockets[2],
                           config.kill_timeout)
        worker.watch(gone_future)
        log.debug("worker %s on Ray node %s (actor pid %d, worker pid %d)", worker_id, host,
                  actor_pid, pid)
        return worker

__all__ = ["RayPoolKind", "RayRuntime", "actor_class", "check_options"]
