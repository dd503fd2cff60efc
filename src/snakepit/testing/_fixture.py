"""The ``snakepit_pool`` fixture's factory (imported only when a test uses it)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import snakepit
from snakepit.testing.faults import Fault, Faults
from snakepit.testing.leaks import LeakCheck


class PoolFactory:
    """Opens pools for one test (``await factory(config)``); closes them after it.

    Each pool runs in the fixture's own task, so it outlives the call that opened it
    and closes in the fixture's teardown, whichever task opened it.
    """

    def __init__(self, nursery: trio.Nursery, faults: Faults) -> None:
        self._nursery = nursery
        self._closing = trio.Event()
        self.faults = faults
        """Arms faults for the pools this factory opened (:meth:`inject`)."""
        self.leaks = LeakCheck()
        """What the teardown compares with (taken when the fixture started)."""
        self.pools: list[snakepit.Pool] = []
        """Every pool opened, in order."""

    async def __call__(self, config: snakepit.PoolConfig | None = None, /,
                       **overrides: Any) -> snakepit.Pool:
        """Open a pool (as :func:`snakepit.open_pool`) that lives until the test ends.

        A pool serving a Python handler gets fault injection (:meth:`inject`); its
        handler is otherwise untouched.

        Raises:
            WorkerStartupError: a worker could not start.
            ConfigError: an override is invalid.
        """
        if config is None:
            config = snakepit.PoolConfig(**overrides)
        elif overrides:
            config = attrs.evolve(config, **overrides)
        config = self._prepare(config)
        pool: snakepit.Pool = await self._nursery.start(self._serve, config)
        self.pools.append(pool)
        return pool

    async def open_pools(self, config: snakepit.SnakepitConfig | Mapping[str, Any]
                         ) -> snakepit.Pools:
        """Open several named pools (as :func:`snakepit.open_pools`) until the test ends.

        Raises:
            WorkerStartupError: a pool could not start; the others are shut down again.
            ConfigError: ``config`` is plain data and invalid.
        """
        if not isinstance(config, snakepit.SnakepitConfig):
            config = snakepit.SnakepitConfig.from_dict(config)
        config = attrs.evolve(config, pools={name: self._prepare(pool_config)
                                             for name, pool_config in config.pools.items()})
        pools: snakepit.Pools = await self._nursery.start(self._serve_pools, config)
        self.pools.extend(pools[name] for name in config.pools)
        return pools

    def _prepare(self, config: snakepit.PoolConfig) -> snakepit.PoolConfig:
        """Fault injection for a Python handler; its run watched for leaks."""
        if config.command is None and config.adapter == "python":
            config = self.faults.wrap(config)
        self.leaks.watch(config)
        return config

    async def _serve_pools(self, config: snakepit.SnakepitConfig,
                           task_status: trio.TaskStatus[snakepit.Pools]) -> None:
        async with snakepit.open_pools(config) as pools:
            task_status.started(pools)
            await self._closing.wait()

    async def _serve(self, config: snakepit.PoolConfig,
                     task_status: trio.TaskStatus[snakepit.Pool]) -> None:
        async with snakepit.open_pool(config) as pool:
            task_status.started(pool)
            await self._closing.wait()

    def inject(self, command: str, kind: str, *, seconds: float = 1.0) -> Fault:
        """Make the next call of ``command`` (in any pool of this test) suffer ``kind``:
        ``crash``, ``hang``, ``slow`` (``seconds`` late), ``garbage`` or ``oversized``.
        See :class:`snakepit.testing.Faults`."""
        return self.faults.inject(command, kind, seconds=seconds)

    def close(self) -> None:
        """Let every pool close (the fixture's teardown)."""
        self._closing.set()


@contextlib.asynccontextmanager
async def open_pool_factory(fault_dir: Path) -> AsyncIterator[PoolFactory]:
    """The fixture's body: yields the factory; on the way out closes its pools and
    fails the test with everything they left behind."""
    async with trio.open_nursery() as nursery:
        factory = PoolFactory(nursery, Faults(fault_dir))
        try:
            yield factory
        finally:
            factory.close()
    leaks = factory.leaks.find()
    if leaks:
        factory.leaks.clean_up()
        pytest.fail("snakepit_pool: the test left behind:\n  " + "\n  ".join(leaks),
                    pytrace=False)
