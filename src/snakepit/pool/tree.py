"""The supervision tree of one pool, assembled: ``open_pool``.

::

    open_pool()                  nursery: the pool
      ├─ pool kind's background work, fork-server template   (Launcher.prepare)
      ├─ Slot.supervise x size   restart with backoff        (WorkerSlots)
      │    └─ run_worker         one OS process, its reader, stderr pump, flusher
      ├─ session sweeper         (SessionAffinity.sweep)
      ├─ health checks, heartbeat watchdog                   (HealthMonitor)
      ├─ ref releaser            (started on first use by DynamicCalls)
      └─ control server          the operators' socket, with the pool's event log

Leaving the block by any route closes the pool (:meth:`Pool.aclose`, shielded) and
waits for every process; the ``pool.stopped`` event follows.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from snakepit import _realtime as realtime
from snakepit.config import PoolConfig
from snakepit.control.server import control_enabled, serve_control
from snakepit.control.snapshot import EventLog
from snakepit.plugins import plugin_manager
from snakepit.pool.nursery import unwrap_single_error
from snakepit.pool.pool import Pool
from snakepit.worker.run import registry

__all__ = ["open_pool", "run_pool", "start_pool"]


async def start_pool(pool: Pool, nursery: trio.Nursery) -> None:
    """Start ``pool``'s parts in ``nursery``: everything its workers need, then every
    slot concurrently, then the sweeper and the watchdogs.

    Raises:
        WorkerStartupError, ConfigError: the first startup error of a slot, the adapter,
            the kind or the template.
    """
    config = pool.config
    started = trio.current_time()
    launcher = pool._launcher
    await launcher.prepare(nursery)
    if launcher.fork_server is not None:
        pool._slots.use_spawner(launcher.fork_server.spawn)
    await pool._slots.start(nursery)
    nursery.start_soon(pool._affinity.sweep)
    if config.health_check_interval is not None:
        nursery.start_soon(pool._health.monitor)
    if config.heartbeat_interval is not None:
        nursery.start_soon(pool._health.watch_heartbeats)
    measurements = {"size": config.size, "duration": trio.current_time() - started}
    if launcher.template_startup is not None:
        measurements["template_startup"] = launcher.template_startup
    pool._emit("pool.started", measurements)


@asynccontextmanager
async def open_pool(config: PoolConfig | None = None, /, **overrides: Any
                    ) -> AsyncIterator[Pool]:
    """Start a pool, yield it, and shut it down on the way out.

    All workers start concurrently; the block is entered once every one has completed
    its handshake. Leaving the block -- normally, by exception or by cancellation --
    shuts every worker down (shutdown frame, grace, SIGTERM, SIGKILL to its process
    group) and waits for them: no process outlives the block. While the block runs,
    the pool serves its control socket (``config.control``).

    Args:
        config: the pool's configuration (default: ``PoolConfig()``).
        **overrides: fields to replace in ``config`` (``size=2``).

    Raises:
        WorkerStartupError: a worker could not start; no worker is left running.
        ConfigError: an override is invalid.
    """
    if config is None:
        config = PoolConfig(**overrides)
    elif overrides:
        config = attrs.evolve(config, **overrides)
    async with run_pool(config, control=control_enabled(config.control)) as pool:
        yield pool


@asynccontextmanager
async def run_pool(config: PoolConfig, *, control: bool) -> AsyncIterator[Pool]:
    """:func:`open_pool` with the control socket chosen by the caller (a pool of
    :func:`~snakepit.open_pools` is reported by its group's socket instead)."""
    plugin_manager()  # installed plugins (telemetry listeners among them) load once
    stopping: float | None = None
    try:
        with unwrap_single_error(), EventLog([config.name] if control else []) as events:
            async with trio.open_nursery() as nursery:
                pool = Pool(config, nursery)
                # under pytest-trio's autojump_clock: no jumps while workers start,
                # run calls or stop (see snakepit._realtime)
                with realtime.pause_autojump(lambda: pool.in_flight) as waiting_on_workers:
                    try:
                        with waiting_on_workers():
                            await start_pool(pool, nursery)
                        if control:
                            await nursery.start(serve_control, {config.name: pool},
                                                registry(config), events)
                        stopping = math.inf  # started: pool.stopped will be emitted
                        yield pool
                    finally:
                        stopping = trio.current_time() if stopping is not None else None
                        with trio.CancelScope(shield=True), waiting_on_workers():
                            await pool.aclose()
    finally:
        if stopping is not None:  # every worker has exited: the nursery is done
            pool._emit("pool.stopped", {"duration": trio.current_time() - stopping})
