"""``pool.map``: batch frames, order, per-item errors, one deadline, early exit,
backpressure, sessions, and a worker crash in the middle of a map."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import snakepit
from snakepit.errors import RemoteError, WorkerCrashed
from snakepit.pool.chunking import ALONE_CHUNK_SECONDS, CHUNK_SECONDS
from tests.conftest import chaos_config, open_gate, support_env


def map_config(**overrides: Any) -> snakepit.PoolConfig:
    return chaos_config(handler="map_handler:MapHandler", env=support_env(), **overrides)


async def drained(pool: snakepit.Pool) -> None:
    """Return once no call is in flight on any worker (abandoned chunks answered).

    No event says "every worker answered"; the workers are real processes, so this
    looks every 10 ms, within a hard limit."""
    for _ in range(1000):
        if not pool.in_flight:
            return
        await trio.sleep(0.01)
    pytest.fail(f"{pool.in_flight} calls still in flight after 10 s")


async def test_results_come_in_input_order() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(500):
            yield i

    async with snakepit.open_pool(map_config(size=2)) as pool:
        for chunksize in (1, 7, None):
            async with pool.map("square", range(1000), chunksize=chunksize) as results:
                got = [r async for r in results]
            assert got == [i * i for i in range(1000)]
            assert results.items_sent == 1000
            if chunksize is not None:  # an explicit size is honoured
                assert results.chunks_sent == -(-1000 // chunksize)
        async with pool.map("square", numbers(), chunksize=16) as results:
            assert [r async for r in results] == [i * i for i in range(500)]
        assert results.chunks_sent == 32  # 500 items, 16 a frame: many items per frame
        async with pool.map("square", []) as results:
            assert [r async for r in results] == []


async def test_automatic_chunks_grow_for_quick_items() -> None:
    async with snakepit.open_pool(map_config(size=2)) as pool:
        async with pool.map("echo", range(20000)) as results:
            assert [r async for r in results] == list(range(20000))
        # a trivial item takes microseconds: chunks grow far past one item each
        assert results.chunks_sent < 20000 / 50


async def test_failing_item_raises_at_its_position() -> None:
    async with snakepit.open_pool(map_config(size=2)) as pool:
        got: list[int] = []
        with pytest.raises(RemoteError) as info:
            async with pool.map("fail_odd", [0, 2, 4, 5, 6, 8], chunksize=2) as results:
                async for r in results:
                    got.append(r)
        assert got == [0, 2, 4]
        assert info.value.remote_type == "ValueError"
        assert "odd item 5" in info.value.remote_message
        await drained(pool)
        assert await pool.execute("echo", "after") == "after"


async def test_return_exceptions_yields_errors_in_place() -> None:
    async with snakepit.open_pool(map_config(size=2)) as pool:
        async with pool.map("fail_odd", range(10), chunksize=3,
                            return_exceptions=True) as results:
            got = [r async for r in results]
        assert [r for r in got if not isinstance(r, RemoteError)] == [0, 2, 4, 6, 8]
        errors = [(i, r) for i, r in enumerate(got) if isinstance(r, RemoteError)]
        assert [i for i, _ in errors] == [1, 3, 5, 7, 9]
        assert all(f"odd item {i}" in e.remote_message for i, e in errors)
        # a chunk-wide error (an unknown command) stands for each of its items
        async with pool.map("no_such_command", range(5), chunksize=2,
                            return_exceptions=True) as results:
            got = [r async for r in results]
        assert len(got) == 5 and all(isinstance(r, snakepit.UnknownCommand) for r in got)


async def test_one_deadline_for_the_whole_map(tmp_path: Path) -> None:
    log = tmp_path / "started"
    items = [{"item": i, "seconds": 30, "log": str(log)} for i in range(40)]
    async with snakepit.open_pool(map_config(size=2)) as pool:
        pids = {w.pid for w in pool.workers()}
        began = time.monotonic()
        with pytest.raises((snakepit.WorkerTimeout, snakepit.QueueTimeout)):
            async with pool.map("nap_item", items, chunksize=1, timeout=0.5) as results:
                async for _ in results:
                    pass
        assert time.monotonic() - began < 5
        await drained(pool)  # the running chunks were cancelled, not left running
        assert {w.pid for w in pool.workers()} == pids  # cooperative: nobody was killed
        assert len(log.read_text().split()) == 2  # one item started per worker, no more
        assert await pool.execute("echo", 1) == 1


async def test_leaving_early_withdraws_what_has_not_started(tmp_path: Path) -> None:
    log = tmp_path / "started"
    items = [{"item": i, "seconds": 0.05 if i < 2 else 30, "log": str(log)}
             for i in range(1000)]
    async with snakepit.open_pool(map_config(size=2)) as pool:
        pids = {w.pid for w in pool.workers()}
        async with pool.map("nap_item", items, chunksize=1) as results:
            async for r in results:
                assert r == 0
                break
        await drained(pool)
        started = [int(i) for i in log.read_text().split()]
        # items 0 and 1 ran; at most one more per worker started before the cancel
        assert len(started) <= 4 and len(set(started)) == len(started)
        assert results.items_sent <= results.window + 1  # one sent as chunk 0 was taken
        assert {w.pid for w in pool.workers()} == pids
        assert await pool.execute("echo", 2) == 2


async def test_cancelled_caller_stops_the_map(tmp_path: Path) -> None:
    log = tmp_path / "started"
    items = [{"item": i, "seconds": 30, "log": str(log)} for i in range(100)]
    async with snakepit.open_pool(map_config(size=2)) as pool:
        with trio.move_on_after(0.5) as scope:
            async with pool.map("nap_item", items, chunksize=1, timeout=None) as results:
                async for _ in results:
                    pass
        assert scope.cancelled_caught
        await drained(pool)
        assert len(log.read_text().split()) == 2
        assert await pool.execute("echo", 3) == 3


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_slow_consumer_and_endless_input_stay_bounded(asynchronous: bool) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    async def endless_async() -> AsyncIterator[int]:
        for i in endless():
            yield i

    chunk = 8
    async with snakepit.open_pool(map_config(size=2)) as pool:
        source: Any = endless_async() if asynchronous else endless()
        async with pool.map("echo", source, chunksize=chunk) as results:
            taken = 0
            async for r in results:
                assert r == taken
                taken += 1
                # a slow consumer: everything else runs (and fills what it may) first
                await trio.testing.wait_all_tasks_blocked(cushion=0.001)
                # the chunks in the window, and the one being consumed
                assert pulled <= taken + (results.window + 1) * chunk
                assert results.high_water <= results.window
                if taken == 300:
                    break
        assert results.high_water == results.window  # the bound was reached, and held


async def test_map_in_a_session() -> None:
    async with snakepit.open_pool(map_config(size=2)) as pool:
        async with pool.session(mode="strict") as session:
            async with session.map("incr", range(10), chunksize=3) as results:
                counts = [r async for r in results]
            assert counts == list(range(1, 11))  # one worker's state, items in order
            assert await session.execute("incr") == 11


async def test_worker_crash_mid_map_moves_its_unstarted_chunks(tmp_path: Path) -> None:
    log, gates = tmp_path / "log", [tmp_path / "gate0", tmp_path / "gate1"]
    progress: list[dict[str, Any]] = []
    arrived = trio.Event()

    def on_progress(event: str, measurements: Any, metadata: Any) -> None:
        progress.append(dict(metadata))
        if len(progress) == 2:
            arrived.set()

    def item(i: int) -> dict[str, Any]:
        args: dict[str, Any] = {"item": i, "log": str(log)}
        if i in (0, 2):  # the first item of each of the first two chunks holds
            args["gate"] = str(gates[i // 2])
        if i == 1:  # chunk 0 crashes its worker on its second item
            args["crash"] = True
        return args

    handler = snakepit.telemetry.attach("call.progress", on_progress)
    try:
        async with snakepit.open_pool(map_config(size=2, pipeline_depth=2)) as pool:
            async with pool.map("record", [item(i) for i in range(24)], chunksize=2,
                                return_exceptions=True) as results:
                got: list[Any] = []
                async with trio.open_nursery() as nursery:
                    async def consume() -> None:
                        got.extend([r async for r in results])

                    nursery.start_soon(consume)
                    with trio.fail_after(10):
                        await arrived.wait()  # chunks 0 and 1 run, one per worker
                    [crashing] = [p["worker"] for p in progress
                                  if p["message"].startswith("item 0 ")]
                    crashed_pid = next(w.pid for w in pool.workers() if w.id == crashing)
                    behind = [c for w in pool.workers() if w.id == crashing
                              for c in w.inflight.behind()]
                    assert behind, "a chunk waits in the crashing worker's pipe"
                    open_gate(gates[0])  # chunk 0 runs on, and its worker dies
                    open_gate(gates[1])
        lines = [line.split() for line in log.read_text().splitlines()]
    finally:
        snakepit.telemetry.detach(handler)
    ran = [int(i) for i, _ in lines]
    # chunk 0 (items 0, 1) died with its worker; every other item ran exactly once
    assert isinstance(got[0], WorkerCrashed) and isinstance(got[1], WorkerCrashed)
    assert got[2:] == list(range(2, 24))
    assert sorted(ran) == [0, *range(2, 24)]  # item 0 ran before the crash; none twice
    moved = {int(i) for w in behind for i in (w.args[0]["item"], w.args[1]["item"])}
    assert moved and all(int(pid) != crashed_pid for i, pid in lines if int(i) in moved)


async def test_map_over_an_enhanced_bridge_target() -> None:
    config = chaos_config(handler="snakepit.bridge.enhanced:EnhancedHandler",
                          allowed_targets=["math", "fractions"])
    async with snakepit.open_pool(config) as pool:
        calls = ({"target": "math.sqrt", "args": [float(x * x)]} for x in range(300))
        async with pool.map("call", calls, chunksize=32) as results:
            assert [r async for r in results] == [float(x) for x in range(300)]
        refused = [{"target": "os.getcwd"}, {"target": "math.sqrt", "args": [4.0]}]
        async with pool.map("call", refused, return_exceptions=True) as results:
            denied, root = [r async for r in results]
        assert root == 2.0 and isinstance(denied, RemoteError)
        assert denied.remote_type.endswith("TargetNotAllowed")
        # what cannot travel stays in the worker, as a Ref bound to where it ran
        thirds = [{"target": "fractions.Fraction", "args": [n, 3]} for n in range(4)]
        async with pool.map("call", thirds, chunksize=2) as results:
            refs = [r async for r in results]
        assert all(isinstance(r, snakepit.Ref) for r in refs)
        assert [await r.getattr("numerator") for r in refs] == [0, 1, 2, 1]
        assert refs[0].pid in {w.pid for w in pool.workers()}


async def test_a_lone_maps_chunks_grow_and_shrink_back_when_a_call_comes(
        tmp_path: Path) -> None:
    # Items of 200 µs: a millisecond of work is ~5 items. An unsized input, so only the
    # pool's sharing sets the chunks, not the end of the input.
    gate = tmp_path / "gate"
    async with snakepit.open_pool(map_config(size=2)) as pool:
        async with pool.map("spin", itertools.repeat(0.0002)) as results:
            seen: list[int] = []
            async for _ in results:
                seen.append(results.last_chunksize)
                if len(seen) == 400:
                    break
            # alone: the budget grew to its limit, and the chunks past a millisecond of
            # work (by the map's own estimate: a loaded machine stretches the items)
            sizer = results._sizer
            assert sizer.budget == ALONE_CHUNK_SECONDS
            assert max(seen) > 1.5 * CHUNK_SECONDS / sizer.per_item, seen
            async with trio.open_nursery() as nursery:
                # another caller's call is queued or in a worker from now on
                nursery.start_soon(pool.execute, "block_until", {"path": str(gate)})
                await trio.testing.wait_all_tasks_blocked()
                before = results.chunks_sent
                async for _ in results:  # the chunks sent before it are answered first
                    if results.chunks_sent > before:
                        break
                # the first chunk sent since is about a millisecond of work again
                assert sizer.budget == CHUNK_SECONDS
                assert (results.last_chunksize
                        <= max(1, 1.5 * CHUNK_SECONDS / sizer.per_item)), results.last_chunksize
                open_gate(gate)
        await drained(pool)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_an_input_that_raises_ends_the_map_with_its_error(asynchronous: bool) -> None:
    def items() -> Iterator[int]:
        yield from range(50)
        raise LookupError("the input broke after 50 items")

    async def items_async() -> AsyncIterator[int]:
        for i in items():
            yield i

    async with snakepit.open_pool(map_config(size=2)) as pool:
        source: Any = items_async() if asynchronous else items()
        got: list[int] = []
        with pytest.raises(LookupError, match="after 50 items"):
            async with pool.map("echo", source, chunksize=8) as results:
                async for r in results:
                    got.append(r)
        assert got == list(range(48))  # every whole chunk before the failure came back
        assert await pool.execute("echo", 1) == 1  # the pool is left clean
        await drained(pool)


async def test_a_sized_input_whose_len_fails_is_still_mapped() -> None:
    class Stubborn:
        """Sized by its type, but its len() raises (a lazy view of something remote)."""

        def __len__(self) -> int:
            raise RuntimeError("length unknown")

        def __iter__(self) -> Iterator[int]:
            return iter(range(300))

    async with snakepit.open_pool(map_config(size=2)) as pool:
        async with pool.map("echo", Stubborn()) as results:
            assert [r async for r in results] == list(range(300))
