"""The ``map`` section: many small items, snakepit's ``pool.map`` against the peers' maps.

Measured, each as items per second over the same identity function on ``workers``
workers (the pools started and warmed before the clock starts):

- snakepit ``pool.map`` with ``chunksize=None`` (its own choice) and at 1, 64 and 1024;
- ``ProcessPoolExecutor.map`` and pebble's ``ProcessPool.map`` at 1, 64 and 1024;
- the raw pipe floor with one frame per item (one host thread, 16 in flight per
  worker): what any pool sending an item per frame could at best do here;
- snakepit ``pool.map`` over items of 10 µs of CPU work each, beside the same items run
  serially in the benchmark's own process (what one CPU of the machine gives now);
  two workers' ideal rate is twice that serial rate (the pool costing nothing).

Chunk size 1 is measured over fewer items (every pool is slow there), the rest over
``items``; rates are per second, so the rows compare.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import trio

import snakepit
from snakepit._bench import peers, raw

CHUNKSIZES = (1, 64, 1024)
WORK = 10e-6
"""Seconds of CPU work per item in the "10 µs items" row."""
AUTO = "snakepit map (auto)"
WORK_ROW = "snakepit map, 10 µs items"
SERIAL_ROW = "10 µs items, serially in one process"
FLOOR = "raw pipe (floor), a frame per item"


def ours(workers: int, items: int, chunksize: int | None, work: float = 0.0
         ) -> dict[str, Any]:
    """snakepit's items/s (and the host's CPU per item) for one map."""
    async def run() -> dict[str, Any]:
        config = snakepit.PoolConfig(size=workers, handler="snakepit.testing:ChaosHandler")
        async with snakepit.open_pool(config) as pool:
            command, values = ("spin", [work] * items) if work else ("echo", range(items))
            async with pool.map(command, list(values)[:200]) as warm:
                async for _ in warm:
                    pass
            cpu, began = time.process_time(), time.perf_counter()
            count = 0
            async with pool.map(command, values, chunksize=chunksize) as results:
                async for _ in results:
                    count += 1
            elapsed = time.perf_counter() - began
            assert count == items
            return {"items_per_s": items / elapsed,
                    "host_cpu_us": (time.process_time() - cpu) / items * 1e6}

    return trio.run(run)


def executor(name: str, workers: int, items: int, chunksize: int) -> dict[str, Any]:
    """A peer's ``map`` of the identity function: items/s."""
    mapped: Callable[[int, int], Any]
    close: Callable[[], None]
    if name == "pebble":
        pebble: Any = peers.optional("pebble")
        pool = pebble.ProcessPool(max_workers=workers)

        def mapped(count: int, size: int) -> Any:
            return pool.map(peers.trivial, range(count), chunksize=size).result()

        def close() -> None:
            pool.close()
            pool.join()
    else:
        ppe = ProcessPoolExecutor(workers)

        def mapped(count: int, size: int) -> Any:
            return ppe.map(peers.trivial, range(count), chunksize=size)

        def close() -> None:
            ppe.shutdown(wait=True)
    try:
        for _ in mapped(100, 1):  # every worker started
            pass
        began = time.perf_counter()
        count = sum(1 for _ in mapped(items, chunksize))
        elapsed = time.perf_counter() - began
    finally:
        close()
    assert count == items
    return {"items_per_s": items / elapsed}


def serial(items: int, work: float = WORK) -> dict[str, Any]:
    """Items of ``work`` seconds run one after another in this process: the pace one CPU
    of this machine gives now (on a box others load, far below ``1 / work``)."""
    began = time.perf_counter()
    for _ in range(items):
        end = time.perf_counter() + work
        while time.perf_counter() < end:
            pass
    return {"items_per_s": items / (time.perf_counter() - began)}


def floor(workers: int, items: int) -> dict[str, Any]:
    return {"items_per_s": raw.throughput(workers, items, depth=16)}


def measure(workers: int, items: int, repeat: int, available: set[str]
            ) -> dict[str, list[dict[str, Any]]]:
    """Every row's samples, the runs interleaved ``repeat`` times."""
    few = max(200, items // 20)
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        AUTO: functools.partial(ours, workers, items, None),
        WORK_ROW: functools.partial(ours, workers, max(1000, items), None, WORK),
        SERIAL_ROW: functools.partial(serial, max(1000, items // 8)),
        FLOOR: functools.partial(floor, workers, items),
    }
    for size in CHUNKSIZES:
        count = few if size == 1 else items
        runs[f"snakepit map chunksize {size}"] = functools.partial(ours, workers, count, size)
        for peer in ("ProcessPoolExecutor", "pebble"):
            if peer in available:
                runs[f"{peer}.map chunksize {size}"] = functools.partial(
                    executor, peer, workers, count, size)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            results[name].append(run())
    return results


def best_per_run(rows: list[dict[str, Any]], prefix: str) -> list[float] | None:
    """For each repetition, the best items/s over the rows named ``prefix...``."""
    samples = [row["items_per_s_samples"] for row in rows if row["name"].startswith(prefix)]
    if not samples:
        return None
    return [max(values) for values in zip(*samples, strict=True)]


def ratio_to_best(rows: list[dict[str, Any]], prefix: str) -> float | None:
    """snakepit's automatic map over the best of a peer's chunk sizes: the median of the
    per-repetition ratios (the runs of one repetition saw the same load)."""
    ours_row = next((row for row in rows if row["name"] == AUTO), None)
    best = best_per_run(rows, prefix)
    if ours_row is None or best is None:
        return None
    return float(statistics.median(
        a / b for a, b in zip(ours_row["items_per_s_samples"], best, strict=True)))


def print_rows(rows: list[dict[str, Any]], out: Callable[[str], None]) -> None:
    auto = next((row for row in rows if row["name"] == AUTO), None)
    out(f"\n{'map: trivial items':<40}{'items/s':>12}{'host µs/item':>14}{'vs auto':>9}")
    for row in rows:
        cpu = f"{row['host_cpu_us']:>14.2f}" if "host_cpu_us" in row else f"{'':>14}"
        share = (f"{row['items_per_s'] / auto['items_per_s']:>8.2f}x" if auto else "")
        out(f"{row['name']:<40}{row['items_per_s']:>12,.0f}{cpu}{share}")
        if "ideal_items_per_s" in row:
            out(f"{'  (ideal: workers x the serial rate)':<40}"
                f"{row['ideal_items_per_s']:>12,.0f}")
