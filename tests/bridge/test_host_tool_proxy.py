"""``snakepit.host_tool(name)`` in the enhanced bridge's arguments: the worker gets a
callable that runs the host tool (issue 17)."""

from __future__ import annotations

from typing import Any

import pytest

import snakepit
from snakepit.bridge.hostcalls import HostToolProxy
from tests.conftest import support_env


async def test_a_host_tool_passed_where_a_callable_is_expected() -> None:
    calls: list[Any] = []

    async def double(args: Any) -> Any:
        calls.append(args)
        return args * 2

    config = snakepit.PoolConfig(size=1, handler="snakepit.bridge.enhanced:EnhancedHandler",
                                 allowed_targets=("reexports",), env=support_env())
    async with snakepit.open_pool(config) as pool:
        pool.register_tool("double", double)
        # reexports.apply(fn, *args) calls fn(*args) in the worker: fn is the proxy
        assert await pool.call("reexports.apply", snakepit.host_tool("double"), 21) == 42
        with pytest.raises(snakepit.RemoteError, match="UnknownTool"):
            await pool.call("reexports.apply", snakepit.host_tool("missing"), 1)
    assert calls == [21]


def test_the_proxy_needs_a_running_call() -> None:
    proxy = HostToolProxy("double", "Twice.")
    assert (proxy.__name__, proxy.__doc__) == ("double", "Twice.")
    with pytest.raises(RuntimeError, match="outside a snakepit call"):
        proxy(1)
    with pytest.raises(TypeError):
        snakepit.host_tool("")
