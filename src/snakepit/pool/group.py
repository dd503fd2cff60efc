"""Several named pools from one config, started together, with command routing.

::

    async with snakepit.open_pools(snakepit.SnakepitConfig.from_toml("snakepit.toml")) as pools:
        await pools["optimizer"].execute("optimize", {...})
        await pools.execute("predict", {...})     # routed by command pattern
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from snakepit.config import SnakepitConfig
from snakepit.control.server import control_enabled, serve_control
from snakepit.control.snapshot import EventLog
from snakepit.errors import RouteNotFound, WorkerStartupError, WorkerTimeout
from snakepit.pool.nursery import unwrap_single_error
from snakepit.pool.pool import Pool
from snakepit.pool.stats import PoolStats
from snakepit.pool.tree import run_pool
from snakepit.worker.calls import ProgressCallback
from snakepit.worker.run import registry

__all__ = ["Pools", "open_pools"]


class Pools(Mapping[str, Pool]):
    """The running pools of an :func:`open_pools` block, by name."""

    def __init__(self, config: SnakepitConfig, pools: dict[str, Pool]) -> None:
        self.config = config
        self._pools = pools

    def __getitem__(self, name: str) -> Pool:
        return self._pools[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pools)

    def __len__(self) -> int:
        return len(self._pools)

    def route(self, command: str) -> Pool:
        """The pool that serves ``command``: the first matching route, else the default.

        Raises:
            RouteNotFound: no route matches and there is no default pool.
        """
        for pattern, name in self.config.routes.items():
            if fnmatch.fnmatchcase(command, pattern):
                return self._pools[name]
        if self.config.default_pool is None:
            raise RouteNotFound(f"no route for command {command!r} and no default_pool")
        return self._pools[self.config.default_pool]

    async def execute(self, command: str, args: Any = None, *, timeout: float | None = None,
                      on_progress: ProgressCallback | None = None,
                      idempotent: bool = False) -> Any:
        """Run ``command`` on the pool its route picks (see :meth:`Pool.execute`).

        A ``WorkerTimeout`` under the pool's own ``call_timeout`` names a pool that
        allows longer, when there is one.
        """
        pool = self.route(command)
        try:
            return await pool.execute(command, args, timeout=timeout, on_progress=on_progress,
                                      idempotent=idempotent)
        except WorkerTimeout as exc:
            raise self._suggest_longer(pool, exc, timeout) from exc

    async def execute_in_session(self, session_id: str, command: str, args: Any = None, *,
                                 timeout: float | None = None,
                                 on_progress: ProgressCallback | None = None,
                                 idempotent: bool = False) -> Any:
        """Run ``command`` in a session of the pool its route picks."""
        pool = self.route(command)
        try:
            return await pool.execute_in_session(session_id, command, args, timeout=timeout,
                                                 on_progress=on_progress,
                                                 idempotent=idempotent)
        except WorkerTimeout as exc:
            raise self._suggest_longer(pool, exc, timeout) from exc

    def _suggest_longer(self, pool: Pool, exc: WorkerTimeout,
                        timeout: float | None) -> WorkerTimeout:
        if timeout is not None:  # the caller chose the timeout: no advice to give
            return exc
        limit = pool.config.call_timeout or math.inf
        longer = [p for p in self._pools.values()
                  if (p.config.call_timeout or math.inf) > limit]
        if not longer:
            return exc
        best = max(longer, key=lambda p: p.config.call_timeout or math.inf)
        allows = (f"{best.config.call_timeout:g}s" if best.config.call_timeout
                  else "no limit")
        return WorkerTimeout(f"{exc}; pool {pool.name!r} allows {limit:g}s, pool "
                             f"{best.name!r} allows {allows}: route long calls there")

    def stats(self) -> dict[str, PoolStats]:
        """Every pool's snapshot, by name."""
        return {name: pool.stats() for name, pool in self._pools.items()}


@asynccontextmanager
async def open_pools(config: SnakepitConfig | Mapping[str, Any]) -> AsyncIterator[Pools]:
    """Start every pool of ``config`` concurrently; stop them all on the way out.

    Args:
        config: a :class:`SnakepitConfig`, or plain data for
            :meth:`SnakepitConfig.from_dict`.

    Raises:
        WorkerStartupError: a pool could not start; the others are shut down again.
        ConfigError: ``config`` is plain data and invalid.
    """
    if not isinstance(config, SnakepitConfig):
        config = SnakepitConfig.from_dict(config)
    release = trio.Event()
    control = control_enabled(any(p.control for p in config.pools.values()))
    with unwrap_single_error(), EventLog(config.pools if control else []) as events:
        async with trio.open_nursery() as nursery:
            async def run(pool_config: Any, *, task_status: Any) -> None:
                async with run_pool(pool_config, control=False) as pool:
                    task_status.started(pool)
                    await release.wait()

            pools: dict[str, Pool] = {}
            errors: list[WorkerStartupError] = []
            control_scope: trio.CancelScope | None = None

            async def start(name: str) -> None:
                try:
                    pools[name] = await nursery.start(run, config.pools[name])
                except WorkerStartupError as exc:
                    errors.append(exc)

            try:
                async with trio.open_nursery() as starters:
                    for name in config.pools:
                        starters.start_soon(start, name)
                if errors:
                    raise errors[0]
                ordered = {name: pools[name] for name in config.pools}
                if control:
                    first = next(iter(config.pools.values()))
                    control_scope = await nursery.start(serve_control, ordered,
                                                        registry(first), events)
                yield Pools(config, ordered)
            finally:
                if control_scope is not None:
                    control_scope.cancel()
                release.set()  # every pool closes, concurrently, before the nursery exits
