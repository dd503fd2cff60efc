"""A pool for synchronous test code: hypothesis's ``@given`` tests and state machines.

Hypothesis calls its tests and rules synchronously, so a Trio pool cannot be awaited
from them directly. :class:`ThreadedPool` runs the pool in a Trio loop on a helper
thread and gives synchronous code a portal into it (:func:`trio.from_thread.run`):
the pool opens once and serves every example, as a real application's pool would.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import attrs
import trio

import snakepit

__all__ = ["ThreadedPool"]

T = TypeVar("T")


class ThreadedPool:
    """``with ThreadedPool(config) as pool: pool.execute("echo", 1)`` from any thread
    but the pool's own.

    Args:
        config: the pool's configuration (default ``PoolConfig()``).
        **overrides: fields to replace in ``config``.
    """

    def __init__(self, config: snakepit.PoolConfig | None = None, /,
                 **overrides: Any) -> None:
        if config is None:
            config = snakepit.PoolConfig(**overrides)
        elif overrides:
            config = attrs.evolve(config, **overrides)
        self.config = config
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._pool: snakepit.Pool | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ThreadedPool:
        """Open the pool; return once every worker is ready.

        Raises:
            WorkerStartupError: as :func:`snakepit.open_pool`.
        """
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"snakepit-pool-{self.config.name}")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with snakepit.open_pool(self.config) as pool:
            self._pool = pool
            self._ready.set()
            await self._stop.wait()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close the pool (shutdown ladder) and wait for it; re-raise its failure."""
        if self._pool is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        assert self._thread is not None
        self._thread.join()
        if self._error is not None and exc is None:
            raise self._error

    @property
    def pool(self) -> snakepit.Pool:
        """The pool (use it through :meth:`run` and :meth:`run_sync`: it lives in
        another thread's Trio run)."""
        if self._pool is None:
            raise snakepit.PoolClosed("the pool is not open")
        return self._pool

    def run(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await async_fn(*args)`` in the pool's Trio run; its result or error."""
        return trio.from_thread.run(async_fn, *args, trio_token=self.token)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the pool's Trio run (to read ``pool.stats()``, say)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def execute(self, command: str, args: Any = None, **kwargs: Any) -> Any:
        """:meth:`snakepit.Pool.execute`, waited for here."""
        pool = self.pool
        return self.run(lambda: pool.execute(command, args, **kwargs))
