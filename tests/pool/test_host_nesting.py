"""A host tool may call the pool, even when every worker waits in ``call_host``
(issue 17): the call runs nested on the worker that waits for the tool, on the waiting
call's capacity, like a call stack. Nested calls start out of order, so they stay out
of the ordering rule that tells which calls of a dead worker never started.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import snakepit
from snakepit.worker.lifecycle import CallState
from tests.conftest import chaos_config, support_env


def tools_config(**overrides: Any) -> snakepit.PoolConfig:
    options: dict[str, Any] = {"handler": "tools_handler:ToolsHandler", "env": support_env()}
    return chaos_config(**{**options, **overrides})


async def test_a_tool_calls_the_pool_of_one_whose_only_worker_waits_for_it() -> None:
    async with snakepit.open_pool(tools_config(size=1)) as pool:
        async def lookup(args: Any) -> Any:
            # the only worker waits in call_host for this very tool
            echoed = await pool.execute("echo", args, timeout=10)
            async with pool.stream("chunks", {"n": 5}, timeout=10) as chunks:
                streamed = [chunk async for chunk in chunks]
            return {"echoed": echoed, "streamed": streamed}

        async def deeper(args: Any) -> Any:  # a tool whose call calls a tool again
            return await pool.execute("ask", {"tool": "lookup", "args": args}, timeout=10)

        async def fan_out(args: Any) -> list[Any]:  # several nested calls at once
            results: list[Any] = [None] * args
            async with trio.open_nursery() as nursery:
                for n in range(args):
                    async def one(n: int = n) -> None:
                        results[n] = await pool.execute("echo", n, timeout=10)
                    nursery.start_soon(one)
            return results

        pool.register_tool("lookup", lookup)
        pool.register_tool("deeper", deeper)
        pool.register_tool("fan_out", fan_out)
        with trio.fail_after(20):  # a deadlock would hold until the timeouts
            assert await pool.execute("ask", {"tool": "lookup", "args": "x"}, timeout=10) == {
                "echoed": "x", "streamed": [0, 1, 2, 3, 4]}
            assert await pool.execute("ask", {"tool": "deeper", "args": "y"}, timeout=10) == {
                "echoed": "y", "streamed": [0, 1, 2, 3, 4]}
            assert await pool.execute("ask", {"tool": "fan_out", "args": 4},
                                      timeout=10) == [0, 1, 2, 3]
        stats = pool.stats()
        assert stats.failed == 0 and stats.in_flight == 0
        worker = pool.workers()[0]
        assert len(worker.nested) == 0 and worker.reserved == 0


@pytest.mark.parametrize("handler", ["ToolsHandler", "ThreadedToolsHandler"])
async def test_every_worker_waiting_in_a_tool_still_serves_its_tools_calls(
        handler: str) -> None:
    """Each worker's every thread waits in call_host, and each tool calls the pool."""
    async with snakepit.open_pool(tools_config(size=2, handler=f"tools_handler:{handler}",
                                               pipeline_depth=1)) as pool:
        capacity = sum(worker.capacity for worker in pool.workers())
        all_waiting = trio.Event()
        waiting = 0

        async def gather(args: Any) -> Any:
            nonlocal waiting
            waiting += 1
            if waiting == capacity:
                all_waiting.set()
            await all_waiting.wait()  # now no worker has a free unit
            return await pool.execute("pid", timeout=10)

        pool.register_tool("gather", gather)
        results: list[Any] = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(capacity):
                    async def one() -> None:
                        results.append(await pool.execute("ask", {"tool": "gather"},
                                                          timeout=15))
                    nursery.start_soon(one)
        pids = {worker.pid for worker in pool.workers()}
        assert len(results) == capacity and set(results) <= pids


async def test_a_worker_dying_in_a_nested_call_gives_back_only_the_never_started() -> None:
    """The worker runs call A (waiting in a tool) and nested call N (inside A's tool) and
    holds B in its pipe behind A. It dies in N: A and N may have run and fail; B had
    not started -- the order of the positional calls still says so -- and runs on the
    replacement."""
    async with snakepit.open_pool(tools_config(size=1, pipeline_depth=4)) as pool:
        old = pool.workers()[0]
        b_sent = trio.Event()
        nested_error: list[BaseException] = []

        async def crash_inside(args: Any) -> None:
            await b_sent.wait()
            try:
                await pool.execute("kill_self", None, timeout=10)
            except snakepit.SnakepitError as exc:
                nested_error.append(exc)
                raise

        pool.register_tool("crash_inside", crash_inside)
        outcomes: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            async def a() -> None:
                try:
                    await pool.execute("ask", {"tool": "crash_inside"}, timeout=20)
                except snakepit.SnakepitError as exc:
                    outcomes["a"] = exc

            async def b() -> None:
                outcomes["b"] = await pool.execute("pid", timeout=20)

            nursery.start_soon(a)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(b)
            await trio.testing.wait_all_tasks_blocked()
            states = [call.state for call in old.inflight]
            assert states == [CallState.STARTED, CallState.SENT]  # B waits behind A
            b_sent.set()
        assert isinstance(outcomes["a"], snakepit.WorkerCrashed)
        assert not isinstance(outcomes["a"], snakepit.WorkerCrashedBeforeStart)
        assert len(nested_error) == 1 and isinstance(nested_error[0], snakepit.WorkerCrashed)
        assert not isinstance(nested_error[0], snakepit.WorkerCrashedBeforeStart)
        assert outcomes["b"] != old.pid  # B never started there: it ran on the replacement
        assert outcomes["b"] == pool.workers()[0].pid


@pytest.mark.parametrize("mode", ["strict", "prefer"])
async def test_a_session_tool_calls_its_own_session_on_the_waiting_worker(mode: str) -> None:
    """A session's call waits in a tool that calls the session again: on a pool of one,
    with the session bound to the only (waiting) worker, that call runs nested there
    and sees the session's state."""
    async with snakepit.open_pool(tools_config(size=1)) as pool:
        sessions: list[Any] = []

        async def bump(args: Any) -> Any:
            return await sessions[0].execute("incr", None, timeout=10)

        async with pool.session(mode=mode, tools={"bump": bump}) as session:  # type: ignore[arg-type]
            sessions.append(session)
            with trio.fail_after(20):
                assert await session.execute("incr", None, timeout=10) == 1
                assert await session.execute("ask", {"tool": "bump"}, timeout=10) == 2
                assert await session.execute("incr", None, timeout=10) == 3


@pytest.mark.parametrize("handler", ["ToolsHandler", "ThreadedToolsHandler"])
async def test_cancelling_the_outer_call_stops_the_nested_call_it_runs(handler: str) -> None:
    """The caller gives up while the worker runs a call nested in its own call's wait:
    the tool is cancelled, which abandons the nested call; the worker stops both (the
    nested one, then the wait) and stays in service."""
    async with snakepit.open_pool(tools_config(size=1, handler=f"tools_handler:{handler}")
                                  ) as pool:
        pid = pool.workers()[0].pid
        nested_running = trio.Event()
        nested_error: list[BaseException] = []

        async def nap_inside(args: Any) -> Any:
            try:
                return await pool.execute("nap", {"seconds": 60}, timeout=60,
                                          on_progress=lambda *_: nested_running.set())
            except BaseException as exc:
                nested_error.append(exc)
                raise

        pool.register_tool("nap_inside", nap_inside)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                async def caller() -> None:
                    await pool.execute("ask", {"tool": "nap_inside"}, timeout=60)
                nursery.start_soon(caller)
                await nested_running.wait()
                nursery.cancel_scope.cancel()
            # both answered within cancel_grace: the same process serves the next call
            assert await pool.execute("pid", timeout=10) == pid
        assert len(nested_error) == 1 and isinstance(nested_error[0], trio.Cancelled)
        worker = pool.workers()[0]
        assert len(worker.nested) == 0 and worker.in_flight == 0 and not pool._tools.runs
