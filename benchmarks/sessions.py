"""In-process session store throughput: the issue asks for at least 100k ops/s.

Measures create, get, touch, update_metadata and delete on a store holding 10k
sessions, with trio's clock as the pool uses it, and prints ops/s for each.

Usage: python benchmarks/sessions.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import trio

from snakepit.sessions.store import SessionStore

N = 100_000
RESULTS = Path(__file__).parent / "results"


async def measure() -> dict[str, float]:
    store = SessionStore(trio.current_time, default_ttl=3600)
    for _ in range(10_000):
        store.create()
    ids = [store.create().id for _ in range(N)]
    rates: dict[str, float] = {}
    operations = {
        "get": lambda i: store.get(ids[i]),
        "touch": lambda i: store.touch(ids[i]),
        "update_metadata": lambda i: store.update_metadata(ids[i], step=i),
        "delete": lambda i: store.delete(ids[i]),
    }
    start = time.perf_counter()
    fresh = [store.create() for _ in range(N)]
    rates["create"] = N / (time.perf_counter() - start)
    del fresh
    for name, operation in operations.items():
        start = time.perf_counter()
        for i in range(N):
            operation(i)
        rates[name] = N / (time.perf_counter() - start)
    return rates


def main() -> None:
    rates = trio.run(measure)
    print(f"{'session store op':<18}{'ops/s':>12}")
    for name, rate in rates.items():
        print(f"{name:<18}{rate:>12,.0f}{'  (below 100k!)' if rate < 100_000 else ''}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sessions.json").write_text(json.dumps(rates, indent=2))


if __name__ == "__main__":
    main()
