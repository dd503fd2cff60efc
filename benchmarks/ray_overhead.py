"""Per-call overhead of a worker placed by Ray, beside a local worker and a Ray actor.

Three ways to run the same trivial call (return the argument), on one local Ray with
2 CPUs:

- **snakepit, local**: a pool of local workers on pipes (``kind="standard"``);
- **snakepit, Ray**: a pool of kind ``ray``: each worker in a Ray actor, the host
  speaking snakepit frames to it over an authenticated TCP connection;
- **Ray actor**: a plain Ray actor method, ``ray.get(actor.echo.remote(x))``, called
  from a thread (the most favourable way to call it: no Trio in the way).

For each: sequential latency (p50, p99 in µs) and throughput of many concurrent calls
over 2 workers / 2 actors, with small arguments and with 1 MiB of bytes; the medians of
``--rounds`` interleaved rounds. Results are printed and saved as
``benchmarks/results/ray_overhead.json``.

All traffic stays on loopback: run outside a private network namespace, the script
re-runs itself in one (``unshare -n``, then ``ip link set lo up``; needs root, or user
namespaces for ``unshare -rn``).

Usage: python benchmarks/ray_overhead.py [--seq 2000] [--calls 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

import snakepit
from snakepit._bench.peers import concurrent_throughput

RESULTS = Path(__file__).parent / "results"
MIB = b"x" * (1 << 20)


def loopback_only() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def reexec_in_namespace() -> int:
    for unshare in (["unshare", "-n"], ["unshare", "-rn"]):
        if shutil.which(unshare[0]) and subprocess.run(
                [*unshare, "true"], capture_output=True).returncode == 0:
            command = [*unshare, "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                       sys.executable, *sys.argv]
            return subprocess.run(command, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
                                  ).returncode
    print("cannot create a network namespace here; refusing to run Ray off loopback",
          file=sys.stderr)
    return 2


def summary(name: str, payload: str, latencies: list[float], throughput: float
            ) -> dict[str, Any]:
    latencies.sort()
    return {"name": name, "payload": payload,
            "p50_us": statistics.median(latencies) * 1e6,
            "p99_us": latencies[int(len(latencies) * 0.99) - 1] * 1e6,
            "calls_per_s": throughput}


async def measure(call: Callable[[Any], Awaitable[Any]], arg: Any, seq: int, calls: int,
                  concurrency: int = 32) -> tuple[list[float], float]:
    for _ in range(50):
        await call(arg)
    latencies = []
    for _ in range(seq):
        started = time.perf_counter()
        await call(arg)
        latencies.append(time.perf_counter() - started)

    return latencies, await concurrent_throughput(lambda _: call(arg), calls, concurrency)


async def bench_pool(name: str, config: snakepit.PoolConfig, seq: int, calls: int
                     ) -> list[dict[str, Any]]:
    rows = []
    async with snakepit.open_pool(config) as pool:
        for payload, arg, n in (("small", 7, calls), ("1 MiB", MIB, calls // 20)):
            async def call(x: Any) -> Any:
                return await pool.execute("echo", x, timeout=30)

            latencies, throughput = await measure(call, arg, seq if payload == "small"
                                                  else seq // 10, n)
            rows.append(summary(name, payload, latencies, throughput))
    return rows


def bench_ray_actor(seq: int, calls: int) -> list[dict[str, Any]]:
    import ray

    @ray.remote(num_cpus=0.5)
    class Echo:
        def echo(self, x: Any) -> Any:
            return x

    actors = [Echo.remote(), Echo.remote()]  # type: ignore[attr-defined]
    rows = []
    for payload, arg, n in (("small", 7, calls), ("1 MiB", MIB, calls // 20)):
        count = seq if payload == "small" else seq // 10
        for _ in range(50):
            ray.get(actors[0].echo.remote(arg))
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            ray.get(actors[0].echo.remote(arg))
            latencies.append(time.perf_counter() - started)

        def run(actor: Any, k: int, value: Any) -> None:
            for _ in range(k):
                ray.get(actor.echo.remote(value))

        threads, per_thread = 32, max(1, n // 32)
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as executor:
            for index in range(threads):
                executor.submit(run, actors[index % 2], per_thread, arg)
        throughput = threads * per_thread / (time.perf_counter() - started)
        rows.append(summary("Ray actor method", payload, latencies, throughput))
    for actor in actors:
        ray.kill(actor)
    return rows


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from snakepit_ray import connect

    base: dict[str, Any] = {"size": 2, "handler": "snakepit.bridge:CommandHandler",
                            "max_queue": args.calls * 2}
    local_pool = snakepit.PoolConfig(**base)
    ray_pool = snakepit.PoolConfig(**base, kind="ray", options={"num_cpus": 0.5})
    started = time.perf_counter()
    async with snakepit.open_pool(local_pool):
        local_start = time.perf_counter() - started
    started = time.perf_counter()
    await trio.to_thread.run_sync(connect, None, {"num_cpus": 2, "include_dashboard": False,
                                                  "_temp_dir": args.temp_dir})
    ray_start = time.perf_counter() - started
    started = time.perf_counter()
    async with snakepit.open_pool(ray_pool):
        pool_start = time.perf_counter() - started
    rounds: list[list[dict[str, Any]]] = []
    for _ in range(args.rounds):  # interleaved, so that a noisy neighbour hits all three
        rows = await bench_pool("snakepit, local", local_pool, args.seq, args.calls)
        rows += await bench_pool("snakepit, Ray", ray_pool, args.seq, args.calls)
        rows += await trio.to_thread.run_sync(bench_ray_actor, args.seq, args.calls)
        rounds.append(rows)
    medians = []
    for index, row in enumerate(rounds[0]):
        runs = [r[index] for r in rounds]
        medians.append({**row, **{key: statistics.median(run[key] for run in runs)
                                  for key in ("p50_us", "p99_us", "calls_per_s")}})
    return {"time": time.time(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "workers": 2, "rounds": args.rounds,
            "ray_start_s": ray_start, "ray_pool_start_s": pool_start,
            "local_pool_start_s": local_start, "rows": medians}


def show(result: dict[str, Any]) -> None:
    print(f"local Ray started in {result['ray_start_s']:.1f} s; a 2-worker Ray pool opens "
          f"in {result['ray_pool_start_s']:.2f} s (a local one in "
          f"{result['local_pool_start_s']:.2f} s); medians of {result['rounds']} rounds")
    print(f"{'':22} {'payload':8} {'p50 µs':>9} {'p99 µs':>9} {'calls/s':>9}")
    for row in result["rows"]:
        print(f"{row['name']:22} {row['payload']:8} {row['p50_us']:9.0f} {row['p99_us']:9.0f} "
              f"{row['calls_per_s']:9.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2000, help="sequential calls measured")
    parser.add_argument("--calls", type=int, default=10000, help="calls for throughput")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    arguments = parser.parse_args()
    if not loopback_only():
        sys.exit(reexec_in_namespace())
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    arguments.temp_dir = tempfile.mkdtemp(prefix="sp-ray-", dir="/tmp")  # Ray's session files
    try:
        outcome = trio.run(main, arguments)
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(arguments.temp_dir, ignore_errors=True)
    show(outcome)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_overhead.json").write_text(json.dumps(outcome, indent=2) + "\n")
