"""The wait queue: FIFO order, the max_queue bound, queue timeouts, pipelining."""

import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import snakepit
from snakepit.pool.dispatch import Dispatcher
from snakepit.pool.pipelining import pipeline_depth
from snakepit.worker.worker import Worker
from tests.conftest import chaos_config


@asynccontextmanager
async def busy(pool: snakepit.Pool) -> AsyncIterator[None]:
    """Keep the pool's only worker busy with a cooperative nap until the block ends.

    The nap is then cancelled; the tests give the pool a ``cancel_grace`` no test waits
    out, so the worker is never killed over it, however loaded the machine."""
    async with trio.open_nursery() as nursery:
        async def nap() -> None:
            with pytest.raises(snakepit.WorkerTimeout):
                await pool.execute("nap", {"seconds": 60}, timeout=60)

        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await nap()

        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.stats().in_flight == 1
        yield
        scope.cancel()


async def test_waiters_are_served_first_come_first_served() -> None:
    async with snakepit.open_pool(chaos_config(size=1, pipeline_depth=1, cancel_grace=60)) as pool:
        order: list[int] = []
        async with trio.open_nursery() as nursery, busy(pool):
            for i in range(5):
                async def call(i: int = i) -> None:
                    await pool.execute("echo", i)
                    order.append(i)

                nursery.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
            assert pool.stats().queue_depth == 5
        assert order == [0, 1, 2, 3, 4]


async def test_full_queue_fails_fast_with_retry_after() -> None:
    config = chaos_config(size=1, max_queue=2, pipeline_depth=1, cancel_grace=60)
    async with snakepit.open_pool(config) as pool:
        async with trio.open_nursery() as nursery, busy(pool):
            for i in range(2):
                nursery.start_soon(pool.execute, "echo", i)
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(1):  # fails fast: no waiting for a slot
                with pytest.raises(snakepit.PoolSaturated) as info:
                    await pool.execute("echo", "one too many")
            assert info.value.retry_after > 0
            assert info.value.retryable is True
        assert pool.stats().rejected == 1


async def test_deadline_passing_in_the_queue_is_queue_timeout() -> None:
    async with snakepit.open_pool(chaos_config(size=1, pipeline_depth=1, cancel_grace=60)) as pool:
        pid = await pool.execute("pid")
        async with busy(pool):
            with pytest.raises(snakepit.QueueTimeout) as info:
                await pool.execute("echo", 1, timeout=0.2)
            assert info.value.retryable is True
            assert pool.stats().queue_depth == 0  # the timed-out waiter left the queue
        assert await pool.execute("pid") == pid  # no worker was touched
        assert pool.stats().timeouts == 1


async def test_cancelled_waiter_leaves_the_queue_and_others_proceed() -> None:
    async with snakepit.open_pool(chaos_config(size=1, pipeline_depth=1, cancel_grace=60)) as pool:
        results: list[str] = []
        async with trio.open_nursery() as nursery, busy(pool):
            doomed = trio.CancelScope()

            async def cancelled_waiter() -> None:
                with doomed:
                    await pool.execute("echo", "never")
                results.append("cancelled")

            async def patient() -> None:
                results.append(await pool.execute("echo", "served"))

            nursery.start_soon(cancelled_waiter)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(patient)
            await trio.testing.wait_all_tasks_blocked()
            doomed.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert pool.stats().queue_depth == 1
        assert results == ["cancelled", "served"]


async def test_idle_workers_are_preferred_to_pipelining() -> None:
    config = chaos_config(size=2, pipeline_depth=2, cancel_grace=60)
    async with snakepit.open_pool(config) as pool:
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(pool.execute, "nap", {"seconds": 3600})
            await trio.testing.wait_all_tasks_blocked()
            # one call per worker, not two in one pipe
            assert [w.in_flight for w in pool.stats().workers] == [1, 1]
            nursery.cancel_scope.cancel()


async def test_when_all_workers_are_busy_one_call_waits_in_each_pipe() -> None:
    async with snakepit.open_pool(chaos_config(size=1, pipeline_depth=2, cancel_grace=60)) as pool:
        ran_as: dict[int, int] = {}  # call -> the worker's count of calls before it
        async with trio.open_nursery() as nursery, busy(pool):
            for i in range(3):
                async def call(i: int = i) -> None:
                    ran_as[i] = (await pool.execute("info"))["calls_served"]

                nursery.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
            stats = pool.stats()
            assert stats.workers[0].in_flight == 2  # the nap and one pipelined call
            assert stats.queue_depth == 2
        # the pipelined call ran first, then the two waiters in FIFO order (the order
        # their callers resume in is trio's: answers read together wake them together)
        assert sorted(ran_as, key=ran_as.__getitem__) == [0, 1, 2]


async def test_a_queued_call_that_cannot_travel_fails_alone() -> None:
    # a waiting call is sent by the worker's reader the moment a unit frees: one whose
    # arguments cannot be encoded must fail in its own caller, and the next one go on
    async with snakepit.open_pool(chaos_config(size=1, pipeline_depth=1)) as pool:
        results: list[object] = []
        async with trio.open_nursery() as nursery, busy(pool):
            async def unencodable() -> None:
                with pytest.raises(snakepit.PayloadError):
                    await pool.execute("echo", object())
                results.append("refused")

            async def fine() -> None:
                results.append(await pool.execute("echo", "served"))

            nursery.start_soon(unencodable)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(fine)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.stats().queue_depth == 2
        assert results == ["refused", "served"]
        assert pool.stats().restarts == 0


async def test_a_queued_call_cancelled_once_sent_stops_in_the_worker() -> None:
    async with snakepit.open_pool(chaos_config(size=1, pipeline_depth=1)) as pool:
        pid = await pool.execute("pid")
        running = trio.Event()
        sent_late = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            async with busy(pool):
                async def queued() -> None:
                    with sent_late:
                        await pool.execute("nap", {"seconds": 60},
                                           on_progress=lambda *_: running.set())

                nursery.start_soon(queued)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.stats().queue_depth == 1
            # the busy nap ended: the queued nap was sent and now runs
            await running.wait()
            sent_late.cancel()
        # the worker got the cancel frame and stopped the nap itself: same process
        with trio.fail_after(10):
            assert await pool.execute("pid") == pid
        assert pool.stats().restarts == 0


class StubWorker:
    """What the dispatcher reads of a worker."""

    def __init__(self) -> None:
        self.capacity = 1
        self.reserved = 0
        self.accepting = self.available = True
        self.parked = 0
        self.inflight: tuple[object, ...] = ()  # nothing waits in its pipe
        self.seat = None
        # never held; no work stealing between stubs
        self.recall = types.SimpleNamespace(holds=0, withdraws=False, withdrawing=0)


def held_after_draining(dispatcher: Dispatcher) -> int:
    """Take every free unit; return how many the stub worker now has out."""
    while dispatcher.try_acquire() is not None:
        pass
    return next(iter(dispatcher._units)).reserved  # type: ignore[attr-defined, no-any-return]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(configured=st.integers(1, 64),
       times=st.lists(st.floats(0.0, 0.02, allow_nan=False) | st.sampled_from(
           [0.001 / d for d in range(1, 66)]), max_size=60))
def test_the_depth_follows_the_mean_service_time_exactly(configured: int,
                                                         times: list[float]) -> None:
    # the dispatcher works the depth out only when the mean leaves the range its depth
    # holds for; it must always be what pipeline_depth says for the mean now (the
    # sampled times sit on the ranges' ends)
    dispatcher = Dispatcher(max_queue=10, pipeline_depth=configured)
    for seconds in times:
        dispatcher.record_service_time(seconds)
        mean = dispatcher.mean_service_time
        assert dispatcher._depth() == pipeline_depth(configured, max(mean, 1e-12))
        dispatcher.mean_service_time = seconds  # set outright, as a test may
        assert dispatcher._depth() == pipeline_depth(configured, max(seconds, 1e-12))


def test_the_pipeline_deepens_for_quick_calls_and_shrinks_for_slow_ones() -> None:
    dispatcher = Dispatcher(max_queue=10, pipeline_depth=8)
    worker = cast(Worker, StubWorker())
    dispatcher.add_worker(worker)
    assert held_after_draining(dispatcher) == 2  # nothing measured yet: one running, one queued
    dispatcher.mean_service_time = 0.0001  # 0.1 ms calls: 1 ms of work is 10 calls
    for _ in range(20):
        dispatcher.release(worker)
        held_after_draining(dispatcher)
    assert worker.reserved == 8  # capped by pipeline_depth
    dispatcher.mean_service_time = 0.01  # 10 ms calls: back to one waiting call
    for _ in range(8):
        dispatcher.release(worker)
    assert held_after_draining(dispatcher) == 2


def test_a_deepening_pipeline_never_adds_primary_units() -> None:
    # a unit put in circulation as the pipeline deepens queues behind a running call:
    # it must not pass for an idle worker, or a caller would queue behind a call while
    # another worker sits idle
    dispatcher = Dispatcher(max_queue=10, pipeline_depth=8)
    busy_one, idle_one = cast(Worker, StubWorker()), cast(Worker, StubWorker())
    dispatcher.add_worker(busy_one)
    dispatcher.add_worker(idle_one)
    dispatcher.mean_service_time = 0.0001
    for _ in range(10):
        assert dispatcher.try_acquire() is not None
        dispatcher.release(busy_one if busy_one.reserved else idle_one)
        for worker in (busy_one, idle_one):
            primary = list(dispatcher._idle).count(worker)  # type: ignore[attr-defined]
            assert primary + worker.reserved <= worker.capacity


def test_a_worker_whose_pipeline_shrinks_still_gets_calls_when_idle() -> None:
    # Regression: the units taken out of circulation as calls got slower could be a
    # worker's primary one, and then sequential calls all went to the other worker.
    dispatcher = Dispatcher(max_queue=10, pipeline_depth=8)
    first, second = cast(Worker, StubWorker()), cast(Worker, StubWorker())
    dispatcher.add_worker(first)
    dispatcher.add_worker(second)
    dispatcher.mean_service_time = 0.0001  # quick calls: both pipelines deepen
    for _ in range(20):
        held = []
        while (worker := dispatcher.try_acquire()) is not None:
            held.append(worker)
        for worker in held:
            dispatcher.release(worker)
    dispatcher.mean_service_time = 0.01  # slow calls: back to one waiting call each
    for _ in range(20):  # sequential calls: take a unit, give it back
        worker = dispatcher.try_acquire()
        assert worker is not None
        dispatcher.release(worker)
    served = set()
    for _ in range(4):
        worker = dispatcher.try_acquire()
        assert worker is not None
        served.add(id(worker))
        dispatcher.release(worker)
    assert served == {id(first), id(second)}  # both idle workers take calls in turn


def test_a_fixed_depth_stays_fixed() -> None:
    dispatcher = Dispatcher(max_queue=10, pipeline_depth=2)
    worker = cast(Worker, StubWorker())
    dispatcher.add_worker(worker)
    dispatcher.mean_service_time = 0.00001
    for _ in range(10):
        dispatcher.release(worker)
        assert held_after_draining(dispatcher) == 2
