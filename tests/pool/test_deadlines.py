"""One deadline per call; cooperative cancellation first, kill and replace after."""

import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import snakepit
from tests.conftest import chaos_config, hold_open, open_gate, support_env


async def test_non_cooperative_call_times_out_and_worker_is_replaced() -> None:
    async with snakepit.open_pool(chaos_config(size=1, cancel_grace=0.2)) as pool:
        old_pid = await pool.execute("pid")
        with pytest.raises(snakepit.WorkerTimeout) as info:
            await pool.execute("sleep", {"seconds": 60}, timeout=0.2)
        assert info.value.retryable is False
        # the worker ignored the cancel frame, so it is killed after cancel_grace
        with trio.fail_after(10):
            while pool.stats().restarts < 1:
                await pool.wait_ready()
                await trio.sleep(0.01)
            await pool.wait_ready()
        new_pid = await pool.execute("pid")
        assert new_pid != old_pid
        stats = pool.stats()
        assert stats.timeouts == 1
        assert stats.workers[0].restarts == 1


async def test_cooperative_handler_stops_and_worker_stays() -> None:
    # a cancel_grace no test will wait out: the same pid means the handler stopped
    async with snakepit.open_pool(chaos_config(size=1, cancel_grace=60)) as pool:
        pid = await pool.execute("pid")
        with pytest.raises(snakepit.WorkerTimeout):
            await pool.execute("nap", {"seconds": 3600}, timeout=0.2)
        with trio.fail_after(30):  # only a safety net
            assert await pool.execute("pid") == pid  # same process, next call served
        assert pool.stats().workers[0].restarts == 0


async def test_cancelling_the_caller_sends_a_cancel_frame_that_stops_the_handler() -> None:
    """No deadline anywhere, so only the cancel frame can stop the nap; the worker is
    serial, so the next call can only run once the nap has stopped."""
    async with snakepit.open_pool(chaos_config(size=1, cancel_grace=60)) as pool:
        pid = await pool.execute("pid")
        async with trio.open_nursery() as nursery:
            running = trio.Event()
            scope = trio.CancelScope()

            async def nap() -> None:
                with scope:
                    await pool.execute("nap", {"seconds": 3600},
                                       on_progress=lambda *_: running.set())

            nursery.start_soon(nap)
            await running.wait()
            scope.cancel()
        assert scope.cancelled_caught
        with trio.fail_after(30):  # only a safety net: the nap would take an hour
            assert await pool.execute("pid") == pid
        assert pool.stats().restarts == 0


async def test_zero_cancel_grace_kills_at_once() -> None:
    async with snakepit.open_pool(chaos_config(size=1, cancel_grace=0)) as pool:
        pid = await pool.execute("pid")
        with pytest.raises(snakepit.WorkerTimeout):
            # non-cooperative: a cooperative nap would answer at its own deadline, and
            # an answer that races the timeout rightly spares the worker
            await pool.execute("sleep", {"seconds": 60}, timeout=0.1)
        with trio.fail_after(10):
            assert await pool.execute("pid") != pid


async def test_answer_to_a_cancelled_call_never_reaches_a_later_call() -> None:
    async with snakepit.open_pool(chaos_config(size=1, cancel_grace=5)) as pool:
        with pytest.raises(snakepit.WorkerTimeout):
            await pool.execute("sleep", {"seconds": 0.5}, timeout=0.1)
        # the sleep finishes inside cancel_grace and its answer (0.5) is discarded
        assert await pool.execute("echo", "mine") == "mine"
        assert await pool.execute("echo", "next") == "next"
        assert pool.stats().workers[0].restarts == 0


async def test_enclosing_cancel_scope_is_honoured_like_timeout() -> None:
    async with snakepit.open_pool(chaos_config(size=1, cancel_grace=60)) as pool:
        pid = await pool.execute("pid")
        with trio.move_on_after(0.2) as scope:
            await pool.execute("nap", {"seconds": 3600}, timeout=3600)
        assert scope.cancelled_caught
        # the tighter deadline travelled to the worker too
        with trio.fail_after(20):
            left = await pool.execute("time_left", timeout=100)
        assert 0 < left <= 20
        assert await pool.execute("pid") == pid  # the nap stopped on its cancel frame


async def test_handler_sees_the_deadline() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        left = await pool.execute("time_left", timeout=10)
        assert 9 < left <= 10
        assert await pool.execute("time_left") is None


async def test_default_call_timeout_applies() -> None:
    async with snakepit.open_pool(chaos_config(size=1, call_timeout=3.0)) as pool:
        left = await pool.execute("time_left")
        assert 2 < left <= 3


async def test_cancelling_one_caller_leaves_other_calls_alone(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # pipeline_depth 1: a worker takes a new call only once it has answered the last
    config = chaos_config(size=2, cancel_grace=60, pipeline_depth=1)
    async with snakepit.open_pool(config) as pool:
        pids = {w.pid for w in pool.workers()}
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            victim = trio.CancelScope()
            running = trio.Event()

            async def cancelled() -> None:
                with victim:
                    await pool.execute("nap", {"seconds": 3600},
                                       on_progress=lambda *_: running.set())

            nursery.start_soon(cancelled)
            await running.wait()
            await hold_open(pool, nursery, gate, results, cooperative=False)
            victim.cancel()
            open_gate(gate)  # the survivor finishes only now, after the cancel
        assert results == ["done"]
        # two calls running at once, so one on each worker: the victim's worker takes
        # one only after it answered the cancel (no deadline; cancel_grace out of reach)
        both = tmp_path / "both"
        with trio.fail_after(30):  # only a safety net: the nap would take an hour
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    await hold_open(pool, nursery, both, results, cooperative=False)
                open_gate(both)
        assert results == ["done"] * 3
        assert {w.pid for w in pool.workers()} == pids
        assert pool.stats().restarts == 0


async def test_expired_request_is_refused_by_the_bridge() -> None:
    """A frame whose deadline passed in transit is refused, never run."""
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        worker = pool.workers()[0]
        # hold the unit the way the pool does, then send with a deadline in the past
        assert pool._dispatcher.try_acquire() is worker
        pending = worker.start_call("echo", 1, deadline=trio.current_time() - 1)
        with pytest.raises(snakepit.QueueTimeout, match="deadline passed"):
            await pending.wait()
        info = await pool.execute("info")
        assert info["calls_served"] == 0  # the worker never ran it


@pytest.mark.parametrize("handler", ["serial", "threaded"])
@pytest.mark.parametrize("cooperative", [False, True], ids=["stuck", "cooperative"])
@pytest.mark.parametrize("cancel_grace", [0, 0.2])
async def test_deadline_in_a_busy_workers_pipe_is_queue_timeout_and_harms_nothing(
        tmp_path: Path, handler: str, cooperative: bool, cancel_grace: float) -> None:
    """With pipelining a call may wait in a busy worker's pipe. Its deadline passing
    there is a QueueTimeout; the worker is not killed and the calls running on it
    finish normally, whether they look at the wire or not."""
    release = tmp_path / "release"
    options: dict[str, Any] = {"size": 1, "cancel_grace": cancel_grace, "pipeline_depth": 2}
    if handler == "threaded":
        options.update(handler="barrier_handler:ThreadedChaosHandler", env=support_env())
    async with snakepit.open_pool(chaos_config(**options)) as pool:
        pid = await pool.execute("pid")
        capacity = pool.workers()[0].capacity
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            for _ in range(capacity):  # every thread of the worker busy
                await hold_open(pool, nursery, release, results, cooperative=cooperative)

            async def sent_to_the_pipe() -> None:
                await trio.testing.wait_all_tasks_blocked()
                assert pool.stats().in_flight == capacity + 1  # crash waits in the pipe

            nursery.start_soon(sent_to_the_pipe)
            with pytest.raises(snakepit.QueueTimeout) as info:
                # `crash` would take the worker down if it ever started
                await pool.execute("crash", timeout=0.2)
            assert info.value.retryable is True
            # An armed cancel_grace would kill the worker within cancel_grace of the
            # timeout: let that much pass (timers fire in deadline order) before the
            # running calls may finish.
            await trio.sleep(cancel_grace)
            open_gate(release)
        assert results == ["done"] * capacity
        assert await pool.execute("pid") == pid
        assert pool.stats().restarts == 0


@pytest.mark.parametrize("cooperative", [False, True], ids=["stuck", "cooperative"])
async def test_cancelling_a_caller_whose_call_waits_in_the_pipe_harms_nothing(
        tmp_path: Path, cooperative: bool) -> None:
    """cancel_grace 0 would kill the worker at once if the host thought the cancelled
    call might have started."""
    release = tmp_path / "release"
    async with snakepit.open_pool(chaos_config(size=1, cancel_grace=0)) as pool:
        pid = await pool.execute("pid")
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            await hold_open(pool, nursery, release, results, cooperative=cooperative)
            scope = trio.CancelScope()

            async def cancel_once_sent() -> None:
                await trio.testing.wait_all_tasks_blocked()
                assert pool.stats().in_flight == 2  # crash waits in the worker's pipe
                scope.cancel()

            nursery.start_soon(cancel_once_sent)
            with scope:
                await pool.execute("crash")
            assert scope.cancelled_caught
            open_gate(release)
        assert results == ["done"]  # cancel_grace 0 would have killed a started call
        assert await pool.execute("pid") == pid  # and crash never ran
        assert pool.stats().restarts == 0




async def test_a_deadline_that_passes_while_frames_are_unread_is_still_queue_timeout(
        tmp_path: Path) -> None:
    """The host tells QueueTimeout from WorkerTimeout by what it has read; a heartbeat
    still in the pipe when the deadline fires makes it wait for its reader and look
    again. (The loop is held until a beat is unread, so that about half the time the
    caller runs before the reader.)"""
    gate = tmp_path / "gate"
    config = chaos_config(size=1, cancel_grace=0, heartbeat_interval=0.01)
    async with snakepit.open_pool(config) as pool:
        worker = pool.workers()[0]
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            await hold_open(pool, nursery, gate, results, cooperative=False)
            outcome: list[BaseException] = []

            async def queued() -> None:
                try:
                    await pool.execute("crash", timeout=0.2)
                except snakepit.SnakepitError as exc:
                    outcome.append(exc)

            nursery.start_soon(queued)
            await trio.testing.wait_all_tasks_blocked()
            assert worker.in_flight == 2
            passed = trio.current_time() + 0.3
            for _ in range(30000):  # no checkpoint: neither the reader nor the caller runs
                if trio.current_time() > passed and worker.connection.unread_bytes():
                    break
                time.sleep(0.001)  # noqa: ASYNC251 -- holding the event loop on purpose
            assert worker.connection.unread_bytes()
            await trio.testing.wait_all_tasks_blocked()
            assert len(outcome) == 1 and isinstance(outcome[0], snakepit.QueueTimeout)
            open_gate(gate)
        assert results == ["done"]
        assert pool.stats().restarts == 0


async def test_a_queued_call_sent_behind_a_stuck_one_times_out_as_never_started(
        tmp_path: Path) -> None:
    """Issue 21, item 2: a call that waited in the queue, was then sent into a busy
    worker's pipe and passed its deadline there never ran: ``QueueTimeout``
    (retryable), not ``WorkerTimeout`` -- deterministically, gates decide the order."""
    first, second = tmp_path / "first", tmp_path / "second"
    async with snakepit.open_pool(chaos_config(size=1, pipeline_depth=2)) as pool:
        outcome: list[BaseException] = []
        failed = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.execute, "block_until", {"path": str(first)})
            nursery.start_soon(pool.execute, "block_until", {"path": str(second)})
            await trio.testing.wait_all_tasks_blocked()
            assert pool.stats().in_flight == 2  # one running, one in its pipe

            async def queued() -> None:
                try:
                    await pool.execute("pid", timeout=2)
                except snakepit.SnakepitError as exc:
                    outcome.append(exc)
                failed.set()

            nursery.start_soon(queued)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.stats().queue_depth == 1  # no unit free: it waits in the queue
            open_gate(first)  # a unit frees: the queued call is sent behind the second
            with trio.fail_after(10):
                await failed.wait()
            open_gate(second)
        [error] = outcome
        assert type(error) is snakepit.QueueTimeout and error.retryable
