"""Side-by-side benchmarks: snakepit against the pools a user would pick instead.

One run measures, on the same trivial task and the same number of workers:

- throughput of many concurrent trivial calls (calls/s);
- sequential call latency, p50 and p99 (µs);

for snakepit, concurrent.futures.ProcessPoolExecutor, trio-parallel, pebble (each when
installed), and a raw baseline: a child answering length-prefixed msgpack over a pipe
with blocking reads, the floor for any pipe-based pool. Results are printed as a table
with ratios to snakepit and saved as JSON (benchmarks/results/latest.json).

Usage: python benchmarks/run.py [--workers 2] [--calls 20000] [--seq 3000]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import trio

import snakepit

RESULTS = Path(__file__).parent / "results"


def trivial(x: int) -> int:
    return x


def summarize(name: str, throughput: float, latencies: list[float]) -> dict[str, Any]:
    latencies.sort()
    return {
        "name": name,
        "calls_per_s": throughput,
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99) - 1] * 1e6,
    }


# -- trio-based pools: the same driver for both -------------------------------------------------
async def measure_trio(name: str, call: Callable[[int], Awaitable[Any]], calls: int,
                       seq: int, concurrency: int = 64) -> dict[str, Any]:
    """Warm up, then ``calls`` calls from ``concurrency`` tasks, then ``seq`` one by one."""
    for i in range(100):
        await call(i)

    async def run(n: int) -> None:
        for i in range(n):
            await call(i)

    per_task = calls // concurrency
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(run, per_task)
    throughput = per_task * concurrency / (time.perf_counter() - start)
    latencies = []
    for i in range(seq):
        t = time.perf_counter()
        await call(i)
        latencies.append(time.perf_counter() - t)
    return summarize(name, throughput, latencies)


async def bench_snakepit(workers: int, calls: int, seq: int) -> dict[str, Any]:
    async with snakepit.open_pool(size=workers, max_queue=calls) as pool:
        return await measure_trio("snakepit", lambda i: pool.execute("echo", i), calls, seq)


async def bench_trio_parallel(workers: int, calls: int, seq: int) -> dict[str, Any]:
    import trio_parallel

    limiter = trio.CapacityLimiter(workers)
    async with trio_parallel.open_worker_context() as ctx:
        return await measure_trio(
            "trio-parallel", lambda i: ctx.run_sync(trivial, i, limiter=limiter), calls, seq)


# -- concurrent.futures / pebble (Future-based executors) -----------------------------------
def bench_executor(name: str, make: Callable[[], Any], submit: Callable[[Any, int], Any],
                   calls: int, seq: int) -> dict[str, Any]:
    with make() as executor:
        for f in [submit(executor, i) for i in range(200)]:
            f.result()
        start = time.perf_counter()
        futures = [submit(executor, i) for i in range(calls)]
        for f in futures:
            f.result()
        throughput = calls / (time.perf_counter() - start)
        latencies = []
        for i in range(seq):
            t = time.perf_counter()
            submit(executor, i).result()
            latencies.append(time.perf_counter() - t)
    return summarize(name, throughput, latencies)


# -- the raw pipe floor ------------------------------------------------------------------------
RAW_CHILD = r"""
import os, struct, msgpack
r, w = 0, 1
buf = b""
while True:
    data = os.read(r, 1 << 16)
    if not data:
        break
    buf += data
    out = []
    while len(buf) >= 4:
        (n,) = struct.unpack(">I", buf[:4])
        if len(buf) < 4 + n:
            break
        msg = msgpack.unpackb(buf[4:4 + n])
        buf = buf[4 + n:]
        payload = msgpack.packb({"id": msg["id"], "value": msg["args"]})
        out.append(struct.pack(">I", len(payload)) + payload)
    if out:
        os.write(w, b"".join(out))
"""


def bench_raw(workers: int, calls: int, seq: int) -> dict[str, Any]:
    """Blocking round trips on one child (the sequential floor); throughput with one
    blocking client per child in threads would be GIL-bound, so the floor for throughput
    is measured as sequential round trips times the number of workers."""
    child = subprocess.Popen([sys.executable, "-c", RAW_CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    wfd, rfd = child.stdin.fileno(), child.stdout.fileno()

    def round_trip(i: int) -> None:
        payload = msgpack.packb({"id": i, "cmd": "echo", "args": 1})
        os.write(wfd, struct.pack(">I", len(payload)) + payload)
        header = os.read(rfd, 4)
        (n,) = struct.unpack(">I", header)
        body = b""
        while len(body) < n:
            body += os.read(rfd, n - len(body))

    for i in range(200):
        round_trip(i)
    latencies = []
    for i in range(seq):
        t = time.perf_counter()
        round_trip(i)
        latencies.append(time.perf_counter() - t)
    child.stdin.close()
    child.wait()
    per_worker = 1 / statistics.mean(latencies)
    return summarize("raw pipe (floor)", per_worker * workers, latencies)


# -- start-up and payloads -------------------------------------------------------------------------
async def bench_cold_start(workers: int) -> dict[str, Any]:
    """Seconds until ``workers`` Python workers have all completed their handshake."""
    start = time.perf_counter()
    async with snakepit.open_pool(size=workers):
        ready = time.perf_counter() - start
    return {"name": f"snakepit: {workers} workers ready (cold)", "seconds": ready}


async def bench_payload(size: int, rounds: int) -> dict[str, Any]:
    """Round trips of ``size`` bytes (echo), in MB/s each way."""
    blob = os.urandom(size)
    async with snakepit.open_pool(size=1, max_frame_size=max(size * 2, 1 << 20)) as pool:
        await pool.execute("echo", blob)
        start = time.perf_counter()
        for _ in range(rounds):
            assert len(await pool.execute("echo", blob)) == size
        elapsed = time.perf_counter() - start
    return {"name": f"snakepit echo {size >> 20} MiB", "mb_per_s": size * rounds / elapsed / 1e6}


def chart(report: dict[str, Any], path: Path) -> bool:
    """A bar chart of calls/s per pool; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [row["name"] for row in report["rows"]]
    rates = [row["calls_per_s"] for row in report["rows"]]
    figure, axis = plt.subplots(figsize=(7, 3))
    axis.barh(names, rates, color=["#2a7" if n == "snakepit" else "#999" for n in names])
    axis.set_xlabel("trivial calls per second (higher is better)")
    axis.set_title(f"{report['workers']} workers, Python {report['python']}, "
                   f"{report['cpus']} CPUs")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


# -- streams -------------------------------------------------------------------------------------
async def bench_stream(chunks: int, size: int) -> dict[str, Any]:
    config = snakepit.PoolConfig(size=1, handler="snakepit.testing:ChaosHandler")
    async with snakepit.open_pool(config) as pool:
        start = time.perf_counter()
        count = 0
        async with pool.stream("blobs", {"n": chunks, "size": size}) as stream:
            async for chunk in stream:
                count += len(chunk)
        elapsed = time.perf_counter() - start
    assert count == chunks * size
    return {"name": f"snakepit stream {size} B", "chunks_per_s": chunks / elapsed,
            "mb_per_s": count / elapsed / 1e6}


RAW_STREAM_CHILD = r"""
import os, struct, sys, msgpack
n, size = int(sys.argv[1]), int(sys.argv[2])
blob = b"x" * size
for i in range(n):
    payload = msgpack.packb({"t": "chunk", "id": 1, "value": blob})
    os.write(1, struct.pack(">I", len(payload)) + payload)
"""


def bench_raw_stream(chunks: int, size: int) -> dict[str, Any]:
    """The floor: a child writing frames as fast as it can, the host decoding them."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", RAW_STREAM_CHILD, str(chunks), str(size)],
                             stdout=subprocess.PIPE)
    assert child.stdout is not None
    fd, buf, count = child.stdout.fileno(), b"", 0
    while data := os.read(fd, 1 << 20):
        buf += data
        while len(buf) >= 4 and len(buf) >= 4 + (n := struct.unpack(">I", buf[:4])[0]):
            count += len(msgpack.unpackb(buf[4:4 + n])["value"])
            buf = buf[4 + n:]
    child.wait()
    elapsed = time.perf_counter() - start
    return {"name": f"raw pipe stream {size} B", "chunks_per_s": chunks / elapsed,
            "mb_per_s": count / elapsed / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--seq", type=int, default=3000)
    options = parser.parse_args()
    w, calls, seq = options.workers, options.calls, options.seq
    rows = [trio.run(bench_snakepit, w, calls, seq), bench_raw(w, calls, seq)]
    rows.append(bench_executor(
        "ProcessPoolExecutor", lambda: concurrent.futures.ProcessPoolExecutor(w),
        lambda ex, i: ex.submit(trivial, i), calls, seq))
    try:
        rows.append(trio.run(bench_trio_parallel, w, calls // 4, seq // 3))
    except ImportError:
        print("trio-parallel not installed: skipped")
    try:
        import pebble

        rows.append(bench_executor("pebble", lambda: pebble.ProcessPool(w),
                                   lambda ex, i: ex.schedule(trivial, (i,)), calls, seq))
    except ImportError:
        print("pebble not installed: skipped")

    streams = []
    for chunks, size in ((20_000, 16), (2_000, 65_536)):
        streams.append(trio.run(bench_stream, chunks, size))
        streams.append(bench_raw_stream(chunks, size))

    extras = [trio.run(bench_cold_start, 16), trio.run(bench_payload, 1 << 20, 50),
              trio.run(bench_payload, 64 << 20, 3)]

    ours = rows[0]
    print(f"\n{w} workers, trivial task, {platform.python_version()}, {os.cpu_count()} CPUs\n")
    print(f"{'pool':<22}{'calls/s':>10}{'p50 µs':>9}{'p99 µs':>9}"
          f"{'snakepit/this calls/s':>24}{'this/snakepit p50':>19}")
    for row in rows:
        print(f"{row['name']:<22}{row['calls_per_s']:>10,.0f}{row['p50_us']:>9.0f}"
              f"{row['p99_us']:>9.0f}{ours['calls_per_s'] / row['calls_per_s']:>23.2f}x"
              f"{row['p50_us'] / ours['p50_us']:>18.2f}x")
    print(f"\n{'stream':<28}{'chunks/s':>10}{'MB/s':>9}")
    for row in streams:
        print(f"{row['name']:<28}{row['chunks_per_s']:>10,.0f}{row['mb_per_s']:>9.1f}")
    print()
    for row in extras:
        figure = (f"{row['seconds']:.2f} s" if "seconds" in row
                  else f"{row['mb_per_s']:,.0f} MB/s")
        print(f"{row['name']:<40}{figure:>14}")
    RESULTS.mkdir(exist_ok=True)
    report = {"time": time.time(), "workers": w, "python": platform.python_version(),
              "cpus": os.cpu_count(), "rows": rows, "streams": streams, "extras": extras}
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2))
    history = RESULTS / "history.jsonl"  # one line a run: progress over time
    with history.open("a") as file:
        file.write(json.dumps(report) + "\n")
    drawn = chart(report, RESULTS / "latest.png")
    print(f"\nsaved {RESULTS / 'latest.json'}, appended to {history}"
          + (f", drew {RESULTS / 'latest.png'}" if drawn else " (no chart: install matplotlib)"))


if __name__ == "__main__":
    main()
