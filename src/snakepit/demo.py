"""``snakepit demo``: a guided tour of the pool on the built-in Python worker."""

from __future__ import annotations

import contextlib
import time

import trio
from rich.console import Console

import snakepit
from snakepit.cli.progress import worker_progress
from snakepit.pool.stats import PoolStats


def format_stats(stats: PoolStats) -> str:
    """A readable table of a stats snapshot."""
    rows = [("worker", "pid", "state", "calls", "in flight", "restarts")]
    rows += [(w.id, str(w.pid or "-"), w.state, str(w.calls_served), str(w.in_flight),
              str(w.restarts)) for w in stats.workers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("")
    lines.append(
        f"pool {stats.name!r}: {stats.calls} calls, {stats.succeeded} ok, {stats.failed} failed "
        f"({stats.timeouts} timeouts, {stats.crashes} crashes, {stats.rejected} rejected); "
        f"queue {stats.queue_depth}, in flight {stats.in_flight}, restarts {stats.restarts}"
    )
    return "\n".join(lines)


async def run_demo(workers: int = 4, calls: int = 2000) -> int:
    config = snakepit.PoolConfig(size=workers, handler="snakepit.testing:ChaosHandler",
                                 cancel_grace=1.0, max_queue=calls)
    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        with worker_progress(Console(stderr=True), workers):
            pool = await stack.enter_async_context(snakepit.open_pool(config))
        print(f"started {workers} workers in {time.perf_counter() - started:.2f}s "
              f"(pids {', '.join(str(w.pid) for w in pool.stats().workers)})")

        print(f"\n1. a burst of {calls} concurrent calls")
        results: list[int] = []

        async def add(i: int) -> None:
            results.append(await pool.execute("compute", {"op": "add", "a": i, "b": 1}))

        burst = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(calls):
                nursery.start_soon(add, i)
        elapsed = time.perf_counter() - burst
        assert sorted(results) == list(range(1, calls + 1))
        print(f"   {calls} results, all correct, in {elapsed:.2f}s "
              f"({calls / elapsed:,.0f} calls/s)")

        print("\n2. calls that outlive their timeout")
        try:
            await pool.execute("nap", {"seconds": 30}, timeout=0.3)
        except snakepit.WorkerTimeout as exc:
            print(f"   WorkerTimeout: {exc}")
        # until the worker has answered the cancel frame (no event marks the answer to
        # an abandoned call; a demo may look at the stats)
        while pool.in_flight:  # noqa: ASYNC110
            await trio.sleep(0.01)
        print("   a cooperative handler stops on the cancel frame and its worker stays: "
              f"{pool.stats().restarts} restarts")
        exited = trio.Event()
        handle = snakepit.telemetry.attach("worker.exited", lambda *_: exited.set())
        try:
            try:
                await pool.execute("sleep", {"seconds": 30}, timeout=0.3)
            except snakepit.WorkerTimeout as exc:
                print(f"   WorkerTimeout: {exc}")
            await exited.wait()  # killed once cancel_grace has run out
        finally:
            snakepit.telemetry.detach(handle)
        await pool.wait_ready()
        print("   a handler that ignores the cancel is killed after cancel_grace and "
              f"replaced: {pool.stats().restarts} restart(s)")

        print("\n3. a worker that crashes mid-call")
        try:
            await pool.execute("crash", {"code": 3})
        except snakepit.WorkerCrashed as exc:
            print(f"   WorkerCrashed: {exc}")
        print(f"   the pool still answers: ping -> {await pool.execute('ping')}")

        print("\n4. a handler that raises")
        try:
            await pool.execute("compute", {"op": "div", "a": 1, "b": 0})
        except snakepit.RemoteError as exc:
            print(f"   RemoteError: {exc} (remote traceback kept: "
                  f"{len(exc.remote_traceback.splitlines())} lines)")

        await pool.wait_ready()
        print("\n" + format_stats(pool.stats()))
    print("\npool closed; every worker process has exited")
    return 0
