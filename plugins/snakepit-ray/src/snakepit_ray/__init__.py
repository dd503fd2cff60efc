"""The Ray pool: a snakepit pool kind whose workers run on a Ray cluster.

``PoolConfig(kind="ray", options={...})``, options:

- ``address``: the cluster (``"auto"``, ``"host:port"``); absent, a local Ray is started
  for development. A process that already called ``ray.init`` keeps its connection.
- ``num_cpus`` (default 1), ``num_gpus`` (default 0), ``memory`` (bytes), ``resources``
  (custom Ray resources, ``{"name": amount}``): what each worker's actor reserves.
- ``runtime_env``: Ray's runtime environment for the actors (pip packages, a
  working_dir, environment variables); the bridge runs under the actor's interpreter.
- ``scheduling_strategy``: ``"DEFAULT"`` or ``"SPREAD"`` (workers over many nodes).
- ``bind``: the address the actor listens on (default: its node's address; never every
  interface unless this names one).
- ``python``: the interpreter on the nodes for the bridge (default: the actor's own).
- ``placement_timeout``: seconds Ray may take to place and start an actor (default 60).
- ``init``: keyword arguments for ``ray.init`` when this process connects.

Each worker slot gets its own actor; the actor starts the worker on its node and hands
it the host's authenticated TCP connections as stdin/stdout and stderr, so the host
speaks snakepit frames straight to the worker. See ``docs/scaling.md``.

Modules: :mod:`~snakepit_ray.driver` (this process's connection to Ray; every call
into Ray's API, in a thread), :mod:`~snakepit_ray.kind` (the pool kind: options,
placing workers), :mod:`~snakepit_ray.channel` (the host's end of the authenticated
connections), :mod:`~snakepit_ray.handle` (the pool's handle on a worker in an actor),
:mod:`~snakepit_ray.actor` (the actor, on the node) and :mod:`~snakepit_ray.auth` (the
handshake both ends speak).
"""

from __future__ import annotations

from snakepit_ray.driver import connect
from snakepit_ray.handle import RayWorker
from snakepit_ray.kind import RayPoolKind, RayRuntime, check_options

__all__ = ["POOL_KINDS", "RayPoolKind", "RayRuntime", "RayWorker", "check_options", "connect"]

POOL_KINDS = [RayPoolKind()]
