"""Host tools (issue 17): a handler calls the application's async functions with
``ctx.call_host``; results and errors cross both ways, session tools are scoped to
their session, and a tool runs under its call's deadline and its caller's cancellation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import snakepit
from tests.conftest import chaos_config, support_env


def tools_config(**overrides: Any) -> snakepit.PoolConfig:
    options: dict[str, Any] = {"handler": "tools_handler:ToolsHandler", "env": support_env()}
    return chaos_config(**{**options, **overrides})


async def double(args: Any) -> Any:
    """Twice ``args``.

    (Only this first paragraph is the description.)"""
    await trio.lowlevel.checkpoint()
    return args * 2


async def test_a_handler_calls_a_host_tool_and_gets_its_result() -> None:
    async with snakepit.open_pool(tools_config(size=1)) as pool:
        pool.register_tool("double", double)
        assert await pool.execute("ask", {"tool": "double", "args": 21}, timeout=10) == 42
        assert await pool.execute("ask_each", {"tool": "double", "items": [1, "a", [0]]},
                                  timeout=10) == [2, "aa", [0, 0]]
        assert await pool.execute("tools", timeout=10) == [
            {"name": "double", "description": "Twice ``args``."}]


async def test_errors_cross_both_ways() -> None:
    class Refused(Exception):
        pass

    async def refuse(args: Any) -> None:
        raise Refused(f"no to {args}")

    async def unencodable(args: Any) -> Any:
        return object()

    async with snakepit.open_pool(tools_config(size=1)) as pool:
        pool.register_tool("refuse", refuse)
        pool.register_tool("unencodable", unencodable)
        # the handler catches the host's error: its type and message arrive
        caught = await pool.execute("ask_catching", {"tool": "refuse", "args": 7}, timeout=10)
        assert caught == {"type": f"{__name__}.{Refused.__qualname__}", "message": "no to 7"}
        assert await pool.execute("ask_catching", {"tool": "missing"}, timeout=10) == {
            "type": "UnknownTool",
            "message": "no host tool 'missing' is reachable from this call "
                       "(known: ['refuse', 'unencodable'])"}
        payload = await pool.execute("ask_catching", {"tool": "unencodable"}, timeout=10)
        assert payload["type"] == "PayloadError"
        # uncaught, it fails the call back in the host, typed
        with pytest.raises(snakepit.RemoteError) as raised:
            await pool.execute("ask", {"tool": "refuse", "args": 1}, timeout=10)
        assert raised.value.remote_type == "snakepit.errors.HostToolError"
        assert "no to 1" in raised.value.remote_message
        # and the worker is still in service
        assert await pool.execute("echo", "fine", timeout=10) == "fine"
    with pytest.raises(TypeError):
        pool.register_tool("snakepit.tools", double)


async def test_session_tools_shadow_pool_tools_and_go_with_the_session() -> None:
    async def pool_whoami(args: Any) -> str:
        return "pool"

    async def session_whoami(args: Any) -> str:
        return "session"

    async def only_here(args: Any) -> str:
        """Reachable from the session's calls only."""
        return "here"

    async with snakepit.open_pool(tools_config(size=2)) as pool:
        pool.register_tool("whoami", pool_whoami)
        async with pool.session(tools={"whoami": session_whoami, "only_here": only_here}) as s:
            assert await s.execute("ask", {"tool": "whoami"}, timeout=10) == "session"
            assert await s.execute("ask", {"tool": "only_here"}, timeout=10) == "here"
            listed = await s.execute("tools", timeout=10)
            # calls outside the session do not see its tools
            assert await pool.execute("ask", {"tool": "whoami"}, timeout=10) == "pool"
            outside = await pool.execute("ask_catching", {"tool": "only_here"}, timeout=10)
        assert sorted(tool["name"] for tool in listed) == ["only_here", "whoami"]
        assert {"name": "only_here",
                "description": "Reachable from the session's calls only."} in listed
        assert outside["type"] == "UnknownTool"
        assert pool._tools.session_tools == {}  # gone with the session
        assert await pool.execute("ask", {"tool": "whoami"}, timeout=10) == "pool"


def tool_that_waits_forever() -> tuple[trio.Event, trio.Event, Any]:
    """A host tool that never returns: events set when it starts and when it is
    cancelled, and the tool."""
    started, cancelled = trio.Event(), trio.Event()

    async def forever(args: Any) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    return started, cancelled, forever


async def test_the_call_timing_out_cancels_the_tool_and_the_worker_stops_waiting(
        tmp_path: Path) -> None:
    started, cancelled, forever = tool_that_waits_forever()

    marker = tmp_path / "stopped"
    async with snakepit.open_pool(tools_config(size=1)) as pool:
        pool.register_tool("forever", forever)
        pid = pool.workers()[0].pid
        with pytest.raises(snakepit.WorkerTimeout):
            await pool.execute("ask_catching", {"tool": "forever", "marker": str(marker)},
                               timeout=1.0)
        assert started.is_set()
        with trio.fail_after(10):
            await cancelled.wait()
        # the worker stopped waiting by itself (it raised CallCancelled) and answered
        # within cancel_grace: it is the same process, still serving
        assert await pool.execute("pid", timeout=10) == pid
        assert "deadline" in marker.read_text() or "cancelled" in marker.read_text()
        assert not pool._tools.runs


async def test_the_caller_cancelled_cancels_the_tool_and_the_worker_stops_waiting(
        tmp_path: Path) -> None:
    started, cancelled, forever = tool_that_waits_forever()

    marker = tmp_path / "stopped"
    async with snakepit.open_pool(tools_config(size=1)) as pool:
        pool.register_tool("forever", forever)
        pid = pool.workers()[0].pid
        async with trio.open_nursery() as nursery:
            async def caller() -> None:
                await pool.execute("ask_catching", {"tool": "forever", "marker": str(marker)})
            nursery.start_soon(caller)
            with trio.fail_after(10):
                await started.wait()
            nursery.cancel_scope.cancel()
        with trio.fail_after(10):
            await cancelled.wait()
        assert await pool.execute("pid", timeout=10) == pid
        assert "cancelled while it waited for host tool 'forever'" in marker.read_text()


async def test_a_tool_runs_under_its_calls_deadline() -> None:
    deadlines: list[float] = []

    async def when(args: Any) -> float:
        deadlines.append(trio.current_effective_deadline())
        return 0.0

    async with snakepit.open_pool(tools_config(size=1)) as pool:
        pool.register_tool("when", when)
        before = trio.current_time()
        await pool.execute("ask", {"tool": "when"}, timeout=30)
        with trio.move_on_after(20):  # an enclosing scope tighter than the timeout
            await pool.execute("ask", {"tool": "when"}, timeout=30)
    assert before + 29 < deadlines[0] < before + 31
    assert deadlines[1] < before + 21


async def test_the_limiter_bounds_tools_running_at_once() -> None:
    running, most = 0, 0
    gate = trio.Event()

    async def slow(args: Any) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await gate.wait()
        finally:
            running -= 1
        return int(args)

    async with snakepit.open_pool(tools_config(size=3, host_tool_limit=2)) as pool:
        pool.register_tool("slow", slow)
        results: list[int] = []
        async with trio.open_nursery() as nursery:
            for n in range(3):
                async def one(n: int = n) -> None:
                    results.append(await pool.execute("ask", {"tool": "slow", "args": n},
                                                      timeout=20))
                nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(10):
                while pool._tools.limiter.statistics().tasks_waiting == 0:
                    await trio.testing.wait_all_tasks_blocked(0.01)
            assert running == 2  # the third waits for the limiter
            gate.set()
    assert sorted(results) == [0, 1, 2]
    assert most == 2
