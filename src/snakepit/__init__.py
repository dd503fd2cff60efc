"""snakepit: pools of external worker processes for Trio applications.

Usage::

    async with snakepit.open_pool(snakepit.PoolConfig(size=4)) as pool:
        result = await pool.execute("echo", {"x": 1}, timeout=5)

The public names below are imported lazily (PEP 562) so that ``import snakepit.bridge``
-- which runs inside worker processes, possibly in an environment that has only
msgpack -- never pulls in trio, attrs or cattrs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "PoolConfig": "snakepit.config",
    "RestartPolicy": "snakepit.policies",
    "SnakepitConfig": "snakepit.config",
    "Pools": "snakepit.pool.group",
    "open_pools": "snakepit.pool.group",
    "SessionHandle": "snakepit.pool.session",
    "SessionStore": "snakepit.sessions.store",
    "telemetry": "snakepit.telemetry",
    "Pool": "snakepit.pool.pool",
    "open_pool": "snakepit.pool.tree",
    "PoolStats": "snakepit.pool.stats",
    "WorkerStats": "snakepit.pool.stats",
    "SlotState": "snakepit.worker.slot_events",
    "CallCancelled": "snakepit.errors",
    "CircuitOpen": "snakepit.errors",
    "RetryPolicy": "snakepit.policies",
    "CircuitBreakerPolicy": "snakepit.policies",
    "ConfigError": "snakepit.errors",
    "PayloadError": "snakepit.errors",
    "PoolBroken": "snakepit.errors",
    "PoolClosed": "snakepit.errors",
    "PoolDraining": "snakepit.errors",
    "PoolSaturated": "snakepit.errors",
    "ProtocolError": "snakepit.errors",
    "QueueTimeout": "snakepit.errors",
    "RemoteError": "snakepit.errors",
    "RefLost": "snakepit.errors",
    "Ref": "snakepit.refs",
    "RouteNotFound": "snakepit.errors",
    "SessionNotFound": "snakepit.errors",
    "SessionWorkerLost": "snakepit.errors",
    "SnakepitError": "snakepit.errors",
    "StreamIdleTimeout": "snakepit.errors",
    "UnknownCommand": "snakepit.errors",
    "WorkerCrashed": "snakepit.errors",
    "WorkerCrashedBeforeStart": "snakepit.errors",
    "WorkerStartupError": "snakepit.errors",
    "WorkerTimeout": "snakepit.errors",
    "HostToolError": "snakepit.errors",
    "HostTool": "snakepit.pool.tools",
    "host_tool": "snakepit.pool.tools",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # explicit re-exports for type checkers; at run time, __getattr__
    from snakepit import telemetry as telemetry
    from snakepit.config import PoolConfig as PoolConfig
    from snakepit.config import SnakepitConfig as SnakepitConfig
    from snakepit.errors import CallCancelled as CallCancelled
    from snakepit.errors import CircuitOpen as CircuitOpen
    from snakepit.errors import ConfigError as ConfigError
    from snakepit.errors import HostToolError as HostToolError
    from snakepit.errors import PayloadError as PayloadError
    from snakepit.errors import PoolBroken as PoolBroken
    from snakepit.errors import PoolClosed as PoolClosed
    from snakepit.errors import PoolDraining as PoolDraining
    from snakepit.errors import PoolSaturated as PoolSaturated
    from snakepit.errors import ProtocolError as ProtocolError
    from snakepit.errors import QueueTimeout as QueueTimeout
    from snakepit.errors import RefLost as RefLost
    from snakepit.errors import RemoteError as RemoteError
    from snakepit.errors import RouteNotFound as RouteNotFound
    from snakepit.errors import SessionNotFound as SessionNotFound
    from snakepit.errors import SessionWorkerLost as SessionWorkerLost
    from snakepit.errors import SnakepitError as SnakepitError
    from snakepit.errors import StreamIdleTimeout as StreamIdleTimeout
    from snakepit.errors import UnknownCommand as UnknownCommand
    from snakepit.errors import WorkerCrashed as WorkerCrashed
    from snakepit.errors import WorkerCrashedBeforeStart as WorkerCrashedBeforeStart
    from snakepit.errors import WorkerStartupError as WorkerStartupError
    from snakepit.errors import WorkerTimeout as WorkerTimeout
    from snakepit.policies import CircuitBreakerPolicy as CircuitBreakerPolicy
    from snakepit.policies import RestartPolicy as RestartPolicy
    from snakepit.policies import RetryPolicy as RetryPolicy
    from snakepit.pool.group import Pools as Pools
    from snakepit.pool.group import open_pools as open_pools
    from snakepit.pool.pool import Pool as Pool
    from snakepit.pool.session import SessionHandle as SessionHandle
    from snakepit.pool.stats import PoolStats as PoolStats
    from snakepit.pool.stats import WorkerStats as WorkerStats
    from snakepit.pool.tools import HostTool as HostTool
    from snakepit.pool.tools import host_tool as host_tool
    from snakepit.pool.tree import open_pool as open_pool
    from snakepit.refs import Ref as Ref
    from snakepit.sessions.store import SessionStore as SessionStore
    from snakepit.worker.slot_events import SlotState as SlotState


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'snakepit' has no attribute {name!r}")
    if module == f"snakepit.{name}":  # a public submodule (snakepit.telemetry)
        return importlib.import_module(module)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
