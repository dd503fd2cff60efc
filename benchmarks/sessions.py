"""In-process session throughput: the issue asks for at least 100k ops/s.

Two measurements, each printing ops/s per operation:

- ``store``: a bare :class:`SessionStore` holding 10k sessions, on trio's clock;
- ``pool-N``: the store as a running pool of N workers uses it -- ``pool.sessions``
  with the pool's own callbacks (telemetry, the sweeper's wake-up, and on delete a drop
  frame to each worker that ran the session's calls). ``delete (bound)`` deletes
  sessions bound to a worker, as they are after their first call, so each sends that
  worker one frame; ``async with pool.session()`` is a whole open/close cycle (two
  store operations and the context manager).

Each figure is the best of three runs.

Telemetry listeners cost what they cost: the pool measurements run with those of the
installed plugins attached (their count is printed and saved), unless
``--no-listeners`` detaches them to show the store's own cost.

A benchmark, not a test: figures depend on the box and its load.

Usage: python benchmarks/sessions.py [--sizes 4,16] [-n 100000] [--no-listeners]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

import snakepit
from snakepit.sessions.store import SessionStore

RESULTS = Path(__file__).parent / "results"
TARGET = 100_000
REPEATS = 3
CYCLE = "async with pool.session()"
"""Open and close: two store operations, so its target is half the others'."""


def rate(n: int, operation: Callable[[int], Any]) -> float:
    """Operations per second of ``operation(i)`` for i in range(n)."""
    start = time.perf_counter()
    for i in range(n):
        operation(i)
    return n / (time.perf_counter() - start)


def best_of(repeats: int, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Each figure's best over ``repeats`` runs (as timeit does: the others measure the
    box's other load, not the code)."""
    runs = [measure() for _ in range(repeats)]
    return {key: max(run[key] for run in runs) for key in runs[0]}


def store_operations(store: SessionStore, n: int,
                     workers: list[Any] | None = None) -> dict[str, float]:
    """create, get, touch, update_metadata and delete, n of each, on ``store``."""
    ids: list[str] = []
    rates = {"create": rate(n, lambda i: ids.append(store.create().id))}
    rates["get"] = rate(n, lambda i: store.get(ids[i]))
    rates["touch"] = rate(n, lambda i: store.touch(ids[i]))
    rates["update_metadata"] = rate(n, lambda i: store.update_metadata(ids[i], step=i))
    rates["delete"] = rate(n, lambda i: store.delete(ids[i]))
    if workers:
        # as after each session's first call: bound to a worker, which holds its state
        bound = [store.create() for _ in range(n)]
        for i, session in enumerate(bound):
            worker = workers[i % len(workers)]
            store.bind(session, worker.id, worker.pid)
        rates["delete (bound)"] = rate(n, lambda i: store.delete(bound[i].id))
    return rates


async def measure_store(n: int) -> dict[str, float]:
    store = SessionStore(trio.current_time, default_ttl=3600)
    for _ in range(10_000):
        store.create()
    return best_of(REPEATS, lambda: store_operations(store, n))


async def measure_pool(size: int, n: int, listeners: bool) -> dict[str, float]:
    config = snakepit.PoolConfig(size=size, health_check_interval=None)
    async with snakepit.open_pool(config) as pool:  # installed plugins attach here
        if not listeners:
            for handler_id in snakepit.telemetry.telemetry.handler_ids():
                snakepit.telemetry.detach(handler_id)
        attached = len(snakepit.telemetry.telemetry.handler_ids())
        for _ in range(10_000):
            pool.sessions.create()
        rates = best_of(REPEATS, lambda: store_operations(pool.sessions, n, pool.workers()))
        cycles, best = n // 10, 0.0
        for _ in range(REPEATS):
            start = time.perf_counter()
            for _ in range(cycles):
                async with pool.session():
                    pass
            best = max(best, cycles / (time.perf_counter() - start))
        rates[CYCLE] = best
    return {**rates, "telemetry listeners": attached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,16", help="pool sizes to measure")
    parser.add_argument("-n", type=int, default=100_000, help="operations of each kind")
    parser.add_argument("--no-listeners", action="store_true",
                        help="detach the installed plugins' telemetry listeners")
    options = parser.parse_args()
    results: dict[str, dict[str, float]] = {"store": trio.run(measure_store, options.n)}
    for size in (int(s) for s in options.sizes.split(",") if s):
        results[f"pool-{size}"] = trio.run(measure_pool, size, options.n,
                                           not options.no_listeners)
    for name, rates in results.items():
        print(f"\n{name:<28}{'ops/s':>12}")
        for operation, value in rates.items():
            if operation == "telemetry listeners":
                print(f"({value:.0f} telemetry listeners attached)")
                continue
            target = TARGET // 2 if operation == CYCLE else TARGET
            note = f"  (below {target // 1000}k!)" if value < target else ""
            print(f"{operation:<28}{value:>12,.0f}{note}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sessions.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
