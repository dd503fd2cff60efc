"""Host tools and worker events from Node.js workers (issue 17): ``ctx.callHost``,
``ctx.hostTools`` and ``ctx.emit`` speak the same frames as the Python bridge, and
calls a tool makes run nested on the Node worker that waits for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import snakepit

HANDLER = r"""
'use strict';
module.exports = {
  async ask(args, ctx) { return ctx.callHost(args.tool, args.args); },
  async catching(args, ctx) {
    try {
      return { value: await ctx.callHost(args.tool, args.args) };
    } catch (err) {
      return { name: err.name, type: err.hostType || null,
               message: err.hostMessage || err.message };
    }
  },
  async tools(args, ctx) { return ctx.hostTools(); },
  emit(args, ctx) {
    try {
      ctx.emit(args.event, args.measurements, args.metadata);
      return 'sent';
    } catch (err) {
      return `${err.name}: ${err.message}`;
    }
  },
  pid() { return process.pid; },
};
"""


@pytest.fixture
def handler(tmp_path: Path) -> str:
    path = tmp_path / "tools.js"
    path.write_text(HANDLER)
    return str(path)


def node_config(handler: str, **overrides: Any) -> snakepit.PoolConfig:
    settings: dict[str, Any] = {"name": "js", "size": 1, "adapter": "node",
                                "options": {"module": handler}}
    settings.update(overrides)
    return snakepit.PoolConfig(**settings)


async def test_a_node_handler_calls_host_tools(handler: str) -> None:
    async def double(args: Any) -> Any:
        """Twice the argument."""
        return args * 2

    async def refuse(args: Any) -> None:
        raise LookupError(f"no {args}")

    async with snakepit.open_pool(node_config(handler)) as pool:
        pool.register_tool("double", double)
        pool.register_tool("refuse", refuse)
        assert await pool.execute("ask", {"tool": "double", "args": 21}, timeout=10) == 42
        assert await pool.execute("tools", timeout=10) == [
            {"name": "double", "description": "Twice the argument."},
            {"name": "refuse", "description": ""}]
        assert await pool.execute("catching", {"tool": "refuse", "args": "way"},
                                  timeout=10) == {
            "name": "HostToolError", "type": "LookupError", "message": "no way"}
        unknown = await pool.execute("catching", {"tool": "missing"}, timeout=10)
        assert unknown["type"] == "UnknownTool"
        with pytest.raises(snakepit.RemoteError) as raised:
            await pool.execute("ask", {"tool": "refuse", "args": 1}, timeout=10)
        assert raised.value.remote_type == "HostToolError"


async def test_a_tool_calls_the_node_pool_of_one_that_waits_for_it(handler: str) -> None:
    async with snakepit.open_pool(node_config(handler)) as pool:
        async def lookup(args: Any) -> Any:
            async with pool.stream("echo", [1, 2], timeout=10) as chunks:
                streamed = [chunk async for chunk in chunks]
            return [await pool.execute("echo", args, timeout=10), streamed]

        pool.register_tool("lookup", lookup)
        with trio.fail_after(20):
            assert await pool.execute("ask", {"tool": "lookup", "args": "x"},
                                      timeout=10) == ["x", [[1, 2]]]


async def test_a_timeout_cancels_the_tool_and_the_node_call(handler: str) -> None:
    cancelled = trio.Event()

    async def forever(args: Any) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with snakepit.open_pool(node_config(handler)) as pool:
        pool.register_tool("forever", forever)
        pid = await pool.execute("pid", timeout=10)
        with pytest.raises(snakepit.WorkerTimeout):
            await pool.execute("ask", {"tool": "forever"}, timeout=0.5)
        with trio.fail_after(10):
            await cancelled.wait()
        # the Node call gave up its wait (CallCancelled) and answered: same process
        assert await pool.execute("pid", timeout=10) == pid


async def test_node_events_become_host_telemetry(handler: str) -> None:
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []
    handle = snakepit.telemetry.attach(
        "worker.js.step", lambda name, m, meta: seen.append((dict(m), dict(meta))))
    try:
        async with snakepit.open_pool(node_config(handler)) as pool:
            assert await pool.execute("emit", {"event": "js.step", "measurements": {"n": 2},
                                               "metadata": {"who": "node"}},
                                      timeout=10) == "sent"
            refused = await pool.execute("emit", {"event": "Bad Name"}, timeout=10)
    finally:
        snakepit.telemetry.detach(handle)
    assert refused.startswith("RangeError: event name 'Bad Name'")
    assert len(seen) == 1
    measurements, metadata = seen[0]
    assert measurements == {"n": 2}
    assert (metadata["who"], metadata["pool"], metadata["command"]) == ("node", "js", "emit")
