"""Broadcasts and replayed set-up (issue 17): a command on every live worker, one
outcome per worker; set-up that every later worker runs before it takes calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

import snakepit
from tests.conftest import chaos_config, support_env


def tools_config(**overrides: Any) -> snakepit.PoolConfig:
    options: dict[str, Any] = {"handler": "tools_handler:ToolsHandler", "env": support_env()}
    return chaos_config(**{**options, **overrides})


async def test_broadcast_runs_on_every_worker_with_one_outcome_each() -> None:
    async with snakepit.open_pool(tools_config(size=3)) as pool:
        pids = {worker.id: worker.pid for worker in pool.workers()}
        assert await pool.broadcast("pid", timeout=10) == pids
        # one worker dies of the broadcast itself: its entry is the error, the others
        # answer, and nothing else is lost
        doomed = pool.workers()[1]
        results = await pool.broadcast("die_if", {"pid": doomed.pid}, timeout=10)
        assert set(results) == set(pids)
        assert isinstance(results[doomed.id], snakepit.WorkerCrashed)
        assert {wid: value for wid, value in results.items() if wid != doomed.id} == {
            wid: pid for wid, pid in pids.items() if wid != doomed.id}
        errors = await pool.broadcast("raise", {"message": "no"}, timeout=10)
        assert all(isinstance(error, snakepit.RemoteError) for error in errors.values())
        await pool.wait_ready()
        assert len(await pool.broadcast("pid", timeout=10)) == 3


async def test_a_dead_worker_is_not_waited_for() -> None:
    async with snakepit.open_pool(tools_config(
            size=2, restart=snakepit.RestartPolicy(backoff_initial=5.0, backoff_max=5.0))
            ) as pool:
        dead, alive = pool.workers()
        dead.kill("killed by the test")
        # its slot waits out a long backoff: the broadcast reaches the live one only
        with trio.fail_after(4):
            assert await pool.broadcast("pid", timeout=10) == {alive.id: alive.pid}


async def test_setup_is_replayed_on_every_new_worker_before_it_takes_calls() -> None:
    async with snakepit.open_pool(tools_config(size=2)) as pool:
        first = await pool.setup("configure", {"lm": "dummy"}, timeout=10)
        assert set(first) == {worker.id for worker in pool.workers()}
        await pool.setup("configure", {"temperature": 0}, timeout=10)
        old = {worker.pid for worker in pool.workers()}
        for worker in pool.workers():  # both replaced: only new workers serve now
            await pool.broadcast("die_if", {"pid": worker.pid}, timeout=10)
        # the first calls after the crash may reach a replacement the moment it is
        # ready: each must find the set-up done
        seen: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                async def one() -> None:
                    seen.append(await pool.execute("configured", timeout=20))
                nursery.start_soon(one)
        assert len(seen) == 20
        assert all(entry == {"pid": entry["pid"], "lm": "dummy", "temperature": 0}
                   for entry in seen)
        assert not {entry["pid"] for entry in seen} & old


async def test_a_worker_whose_setup_fails_is_replaced(tmp_path: Path) -> None:
    failed: list[dict[str, Any]] = []
    refuse = tmp_path / "refuse"
    fixed = trio.Event()

    def on_failed(name: str, measurements: Any, metadata: Any) -> None:
        failed.append(dict(metadata))
        refuse.unlink()  # the next replacement's set-up succeeds
        fixed.set()

    handle = snakepit.telemetry.attach("worker.setup_failed", on_failed)
    try:
        async with snakepit.open_pool(tools_config(size=1)) as pool:
            await pool.setup("configure_unless", {"path": str(refuse)}, timeout=10)
            refuse.write_text("")
            first = pool.workers()[0].pid
            await pool.broadcast("die_if", {"pid": first}, timeout=10)
            with trio.fail_after(20):
                await fixed.wait()
                served = await pool.execute("configured", timeout=15)
    finally:
        snakepit.telemetry.detach(handle)
    assert [entry["command"] for entry in failed] == ["configure_unless"]
    assert failed[0]["pid"] != first  # the first replacement failed it and was killed
    assert served["checked"] is True and served["pid"] not in (first, failed[0]["pid"])
