"""Cancelled is not failed: a caller that goes away is counted apart (issue 21, item 6).

A web service cancels the handler of a client that disconnects; 200 disconnects showed
as 200 failures in ``stats().failed`` and fired failed-call alerts on normal churn.
"""

from pathlib import Path

import pytest
import trio
import trio.testing

import snakepit
from tests.conftest import chaos_config, hold_open, open_gate


async def test_calls_their_caller_cancelled_count_as_cancelled_not_failed(
        tmp_path: Path) -> None:
    errors: list[str] = []
    handle = snakepit.telemetry.attach(
        "call.exception", lambda name, m, meta: errors.append(str(meta["error"])))
    try:
        async with snakepit.open_pool(chaos_config(size=1, pipeline_depth=1)) as pool:
            # cancelled while the worker runs it
            with trio.CancelScope() as scope:
                await pool.execute("nap", {"seconds": 60},
                                   on_progress=lambda *_: scope.cancel())
            # cancelled while it waits in the queue for the busy worker
            gate, held = tmp_path / "gate", list[str]()
            async with trio.open_nursery() as nursery:
                await hold_open(pool, nursery, gate, held)
                with trio.CancelScope() as scope:
                    nursery.start_soon(_cancel_when_queued, pool, scope)
                    await pool.execute("echo", "never")
                open_gate(gate)
            # a stream whose consumer goes away
            with trio.CancelScope() as scope:
                async with pool.stream("count", {"n": 1000}) as chunks:
                    async for _ in chunks:
                        scope.cancel()
                        await trio.lowlevel.checkpoint()
            # real failures still count as failed
            with pytest.raises(snakepit.WorkerTimeout):
                await pool.execute("nap", {"seconds": 60}, timeout=0.2)
            with pytest.raises(snakepit.RemoteError):
                await pool.execute("raise")
            stats = pool.stats()
    finally:
        snakepit.telemetry.detach(handle)
    assert held == ["done"]
    assert (stats.cancelled, stats.failed, stats.timeouts) == (3, 2, 1)
    assert stats.calls == stats.succeeded + stats.failed + stats.cancelled
    assert errors == ["Cancelled"] * 3 + ["WorkerTimeout", "RemoteError"]
    assert set(errors[:3]) <= snakepit.telemetry.CANCELLED_ERRORS


async def _cancel_when_queued(pool: snakepit.Pool, scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    assert pool.stats().queue_depth == 1
    scope.cancel()

