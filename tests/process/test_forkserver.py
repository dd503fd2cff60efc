"""Warm start: workers forked from a template that imported the heavy modules once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import snakepit
from tests.conftest import chaos_config, is_alive, kill_and_wait, support_env
from tests.process.test_shutdown import wait_gone


def warm_config(log: Path, **overrides: object) -> snakepit.PoolConfig:
    env = {**support_env(), "SNAKEPIT_TEST_IMPORT_LOG": str(log)}
    options: dict[str, object] = {"size": 2, "preload": ("heavy_import",),
                                  "warm_start": True, "env": env}
    options.update(overrides)
    return chaos_config(**options)


def importers(log: Path) -> list[int]:
    """Pids of the processes that imported the heavy module, in order."""
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def process_facts(pid: int) -> tuple[int, int]:
    """(parent pid, process group) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[2])


def template_pid(pool: snakepit.Pool) -> int:
    server = pool._launcher.fork_server
    assert server is not None and server.template_pid is not None
    return server.template_pid


async def test_forked_workers_serve_and_are_the_hosts_own_children(tmp_path: Path) -> None:
    log = tmp_path / "imports"
    async with snakepit.open_pool(warm_config(log, size=3)) as pool:
        template = template_pid(pool)
        pids = {w.pid for w in pool.workers()}
        assert len(pids) == 3 and template not in pids
        for pid in pids:
            # re-parented to the host, in a process group of its own: the host waits
            # on it, reaps it and kills its group exactly as for a cold worker
            assert process_facts(pid) == (os.getpid(), pid)
        served = {await pool.execute("pid") for _ in range(12)}
        assert served <= pids and len(served) > 1
        assert await pool.execute("echo", {"x": [1, 2]}) == {"x": [1, 2]}
        # the heavy module was imported once, by the template, and never again
        assert importers(log) == [template]


async def test_cold_workers_each_import_the_preloaded_module(tmp_path: Path) -> None:
    log = tmp_path / "imports"
    async with snakepit.open_pool(warm_config(log, warm_start=False)) as pool:
        assert pool._launcher.fork_server is None
        assert sorted(importers(log)) == sorted(w.pid for w in pool.workers())


async def test_a_crashed_worker_is_replaced_by_a_fork(tmp_path: Path) -> None:
    log = tmp_path / "imports"
    async with snakepit.open_pool(warm_config(log, size=1)) as pool:
        template = template_pid(pool)
        old = pool.workers()[0].pid
        await kill_and_wait(pool, old)
        new = pool.workers()[0].pid
        assert new != old
        assert process_facts(new) == (os.getpid(), new)
        assert await pool.execute("pid") == new
        assert importers(log) == [template]  # forked again, not started cold
        assert pool.stats().restarts == 1


async def test_nothing_survives_the_pool(tmp_path: Path) -> None:
    async with snakepit.open_pool(warm_config(tmp_path / "imports")) as pool:
        pids = [w.pid for w in pool.workers()] + [template_pid(pool)]
        grandchild = await pool.execute("spawn_child")
    assert not any(is_alive(pid) for pid in pids)
    await wait_gone(grandchild)


async def test_the_registry_records_forked_workers_and_the_template(tmp_path: Path) -> None:
    config = warm_config(tmp_path / "imports", state_dir=str(tmp_path / "state"))
    async with snakepit.open_pool(config) as pool:
        record = json.loads(next((tmp_path / "state" / "runs").glob("*.json")).read_text())
        recorded = {worker["pid"] for worker in record["workers"]}
        assert recorded == {w.pid for w in pool.workers()} | {template_pid(pool)}
    assert not list((tmp_path / "state" / "runs").glob("*.json"))


async def test_a_dead_template_is_replaced_and_workers_keep_serving(tmp_path: Path) -> None:
    log = tmp_path / "imports"
    async with snakepit.open_pool(warm_config(log)) as pool:
        first = template_pid(pool)
        workers = {w.pid for w in pool.workers()}
        os.kill(first, signal.SIGKILL)
        await wait_gone(first)
        # the workers are the host's children, not the template's: they live on
        assert {await pool.execute("pid") for _ in range(8)} <= workers
        # a replacement is forked from a new template (which imported once more)
        await kill_and_wait(pool, next(iter(workers)))
        second = template_pid(pool)
        assert second != first
        assert importers(log) == [first, second]
        replacement = ({w.pid for w in pool.workers()} - workers).pop()
        assert process_facts(replacement) == (os.getpid(), replacement)


async def test_a_template_that_cannot_import_fails_the_pool_clearly(tmp_path: Path) -> None:
    with pytest.raises(snakepit.WorkerStartupError) as info:
        async with snakepit.open_pool(warm_config(tmp_path / "imports",
                                                  preload=("no_such_module_here",))):
            pytest.fail("the pool must not open")
    assert "template" in str(info.value)
    assert "no_such_module_here" in info.value.stderr_tail


async def test_only_the_python_adapter_can_start_warm() -> None:
    with pytest.raises(snakepit.ConfigError, match="warm_start"):
        async with snakepit.open_pool(size=1, warm_start=True,
                                      command=[sys.executable, "-m", "snakepit.bridge"]):
            pytest.fail("the pool must not open")


HOST = """
import json, sys, trio, snakepit
async def main():
    async with snakepit.open_pool(size=2, warm_start=True) as pool:
        template = pool._launcher.fork_server
        print(json.dumps([w.pid for w in pool.workers()] + [template.template_pid]), flush=True)
        await trio.sleep_forever()
trio.run(main)
"""


async def test_sigkilled_host_takes_forked_workers_and_the_template_along() -> None:
    host = subprocess.Popen([sys.executable, "-c", HOST], stdout=subprocess.PIPE)
    try:
        assert host.stdout is not None
        pids = json.loads(await trio.to_thread.run_sync(host.stdout.readline))
        assert len(pids) == 3 and all(is_alive(pid) for pid in pids)
        host.kill()  # SIGKILL: no cleanup code runs in the host
        host.wait()
        for pid in pids:
            await wait_gone(pid)  # each one's parent-death signal names the host
    finally:
        host.kill()
        host.wait()
