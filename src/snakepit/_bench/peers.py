"""The pools a Python user would pick instead: ProcessPoolExecutor, pebble, trio-parallel.

Each gets the same trivial task and the same worker count as snakepit. Executors
(ProcessPoolExecutor, pebble) are driven the way their users drive them: submit every
call, then collect the futures. trio-parallel is driven like snakepit: many Trio tasks
each awaiting one call at a time. pebble and trio-parallel are optional: a missing one
is skipped by the caller with a note.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import trio


def trivial(x: int) -> int:
    """The task every pool runs."""
    return x


def echo(blob: bytes) -> bytes:
    """The payload task: send the bytes back."""
    return blob


def import_and_wait(module: str, path: str, barrier: Any) -> int:
    """The start-up task: import the heavy module, then wait until every worker has."""
    if path and path not in sys.path:
        sys.path.insert(0, path)
    importlib.import_module(module)
    barrier.wait(timeout=120)
    return os.getpid()


def optional(name: str) -> Any | None:
    """The module ``name``, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


Executor = Any  # concurrent.futures.Executor or pebble.ProcessPool
Submit = Callable[[Executor, Callable[..., Any], Any], Any]


def _submit_ppe(executor: Executor, fn: Callable[..., Any], arg: Any) -> Any:
    return executor.submit(fn, arg)


def _submit_pebble(executor: Executor, fn: Callable[..., Any], arg: Any) -> Any:
    return executor.schedule(fn, (arg,))


def executors(workers: int) -> dict[str, tuple[Callable[[], Executor], Submit]]:
    """The executor-style peers that are installed: name -> (make, submit)."""
    found: dict[str, tuple[Callable[[], Executor], Submit]] = {
        "ProcessPoolExecutor": (lambda: concurrent.futures.ProcessPoolExecutor(workers),
                                _submit_ppe)}
    pebble = optional("pebble")
    if pebble is not None:
        found["pebble"] = (lambda: pebble.ProcessPool(max_workers=workers), _submit_pebble)
    return found


def executor_calls(make: Callable[[], Executor], submit: Submit, calls: int,
                   seq: int) -> tuple[float, list[float]]:
    """(calls per second with every call submitted at once, sequential latencies)."""
    with make() as executor:
        for future in [submit(executor, trivial, i) for i in range(200)]:
            future.result()
        start = time.perf_counter()
        futures = [submit(executor, trivial, i) for i in range(calls)]
        for future in futures:
            future.result()
        throughput = calls / (time.perf_counter() - start)
        samples = []
        for i in range(seq):
            began = time.perf_counter()
            submit(executor, trivial, i).result()
            samples.append(time.perf_counter() - began)
    return throughput, samples


def executor_payload(make: Callable[[], Executor], submit: Submit, size: int,
                     rounds: int) -> float:
    """Seconds per echo of ``size`` bytes."""
    blob = os.urandom(size)
    with make() as executor:
        submit(executor, echo, blob).result()
        start = time.perf_counter()
        for _ in range(rounds):
            submit(executor, echo, blob).result()
        return (time.perf_counter() - start) / rounds


def executor_start(name: str, workers: int, module: str, path: str) -> float:
    """Seconds until ``workers`` fresh workers have each imported ``module``."""
    manager = multiprocessing.Manager()
    try:
        barrier = manager.Barrier(workers)
        make, _ = executors(workers)[name]
        start = time.perf_counter()
        with make() as executor:
            futures = [executor.submit(import_and_wait, module, path, barrier)
                       if name == "ProcessPoolExecutor"
                       else executor.schedule(import_and_wait, (module, path, barrier))
                       for _ in range(workers)]
            pids = {future.result() for future in futures}
            elapsed = time.perf_counter() - start
        assert len(pids) == workers
        return elapsed
    finally:
        manager.shutdown()


async def concurrent_throughput(call: Callable[[int], Any], calls: int,
                                concurrency: int) -> float:
    """Calls per second of ``await call(i)`` from ``concurrency`` tasks, one call at a
    time each: the same driver for every Trio-based pool."""
    async def run(n: int) -> None:
        for i in range(n):
            await call(i)

    per_task = max(1, calls // concurrency)
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(run, per_task)
    return per_task * concurrency / (time.perf_counter() - start)


# -- trio-parallel ---------------------------------------------------------------------
async def trio_parallel_calls(workers: int, calls: int, seq: int,
                              concurrency: int = 64) -> tuple[float, list[float]]:
    """trio-parallel, driven like snakepit: ``concurrency`` tasks, one call at a time."""
    trio_parallel = importlib.import_module("trio_parallel")
    limiter = trio.CapacityLimiter(workers)
    async with trio_parallel.open_worker_context() as context:
        for i in range(100):
            await context.run_sync(trivial, i, limiter=limiter)

        async def call(i: int) -> Any:
            return await context.run_sync(trivial, i, limiter=limiter)

        throughput = await concurrent_throughput(call, calls, concurrency)
        samples = []
        for i in range(seq):
            began = time.perf_counter()
            await context.run_sync(trivial, i, limiter=limiter)
            samples.append(time.perf_counter() - began)
    return throughput, samples


async def trio_parallel_payload(size: int, rounds: int) -> float:
    trio_parallel = importlib.import_module("trio_parallel")
    blob = os.urandom(size)
    async with trio_parallel.open_worker_context() as context:
        await context.run_sync(echo, blob)
        start = time.perf_counter()
        for _ in range(rounds):
            await context.run_sync(echo, blob)
        return (time.perf_counter() - start) / rounds


async def trio_parallel_start(workers: int, module: str, path: str) -> float:
    trio_parallel = importlib.import_module("trio_parallel")
    manager = multiprocessing.Manager()
    try:
        barrier = manager.Barrier(workers)
        limiter = trio.CapacityLimiter(workers)
        pids: set[int] = set()
        start = time.perf_counter()
        async with trio_parallel.open_worker_context() as context:
            async def one() -> None:
                pids.add(await context.run_sync(import_and_wait, module, path, barrier,
                                                limiter=limiter))

            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(one)
            elapsed = time.perf_counter() - start
        assert len(pids) == workers
        return elapsed
    finally:
        manager.shutdown()
