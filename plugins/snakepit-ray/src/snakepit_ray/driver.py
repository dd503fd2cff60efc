"""The Ray driver: this process's connection to Ray, and every call into Ray's API.

Every call into Ray goes through :func:`ray_call`: ``trio.to_thread.run_sync`` under one
``CapacityLimiter`` per Trio run. Ray's Python API is synchronous -- even ``.remote()``
may wait on the cluster (exporting a class, registering an actor), ``ray.get`` blocks,
and its async support needs an asyncio loop -- and anything that blocks the Trio thread
stalls every pool's calls, deadlines and heartbeats. The limiter keeps a pool of many
workers starting at once from opening as many threads. Waiting for an actor's answer
holds no thread: the object ref's ``concurrent.futures.Future`` wakes the Trio task
through the run's token.

``ray.init`` itself runs in a thread of its own that lives as long as the process: a
local Ray started for development asks Linux to kill its processes when the *thread*
that started them exits, and Trio's worker threads exit when idle. Off the main thread,
Ray also leaves the host's SIGTERM handling alone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import trio

T = TypeVar("T")

THREADS = 8
"""Threads one Trio run may have inside Ray's API at once."""

_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("snakepit_ray")


def limiter() -> trio.CapacityLimiter:
    """The Trio run's limiter for threads calling into Ray."""
    try:
        return _limiter.get()
    except LookupError:
        _limiter.set(trio.CapacityLimiter(THREADS))
        return _limiter.get()


async def ray_call(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` -- a call into Ray's API -- in a worker thread."""
    return await trio.to_thread.run_sync(function, *args, limiter=limiter())


async def wait_future(future: concurrent.futures.Future[T]) -> T:
    """The result of ``future`` (an object ref's), without holding a thread meanwhile."""
    if not future.done():
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        await done.wait()
    return future.result()


# -- the driver --------------------------------------------------------------------------
_driver_lock = threading.Lock()


class _NotMainThread(logging.Filter):
    """Drops Ray's warning that it set no SIGTERM handler: on purpose, the host's
    signals stay the host's (Trio's, or the application's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def connect(address: str | None, init_options: Mapping[str, Any] | None = None) -> str:
    """Make this process a Ray driver, once; returns the cluster's GCS address.

    ``address`` None starts a local Ray (development); ``"auto"`` or ``host:port`` joins
    a running cluster. A process that already called ``ray.init`` keeps its connection.
    Blocking: from Trio, call it through :func:`ray_call`.
    """
    import ray

    with _driver_lock:
        if not ray.is_initialized():
            started: concurrent.futures.Future[None] = concurrent.futures.Future()

            def driver() -> None:
                quiet = _NotMainThread()
                ray_log = logging.getLogger("ray._private.worker")
                ray_log.addFilter(quiet)
                try:
                    ray.init(address=address, **dict(init_options or {}))
                except BaseException as exc:
                    started.set_exception(exc)
                    return
                finally:
                    ray_log.removeFilter(quiet)
                started.set_result(None)
                threading.Event().wait()  # a local Ray's processes die with this thread

            threading.Thread(target=driver, name="snakepit-ray-driver", daemon=True).start()
            started.result()
        return str(ray.get_runtime_context().gcs_address)



def kill_actor(handle: Any) -> None:
    """``ray.kill`` the actor behind ``handle``, never restarted; an actor already gone
    is no error. Blocking: from Trio, call it through :func:`ray_call`."""
    import ray

    with contextlib.suppress(Exception):
        ray.kill(handle, no_restart=True)


__all__ = ["THREADS", "connect", "kill_actor", "limiter", "ray_call", "wait_future"]
