"""The run registry: what a SIGKILLed host leaves behind is found and killed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import trio

import snakepit
from snakepit.process.registry import RunRegistry, reap_orphans, start_time
from tests.conftest import is_alive
from tests.process.test_shutdown import wait_gone

HOST = """
import json, sys, trio, snakepit

async def main():
    config = snakepit.PoolConfig(size=2, handler="snakepit.testing:ChaosHandler",
                                 state_dir=sys.argv[1])
    async with snakepit.open_pool(config) as pool, trio.open_nursery() as nursery:
        running = trio.Event()
        nursery.start_soon(lambda: pool.execute(
            "outlive_host", {"seconds": 3600}, on_progress=lambda *_: running.set()))
        await running.wait()
        stubborn = next(w.pid for w in pool.workers() if w.in_flight)
        grandchild = await pool.execute("spawn_child")
        print(json.dumps({"workers": [w.pid for w in pool.workers()],
                          "stubborn": stubborn, "grandchild": grandchild}), flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def orphaned_run(state_dir: Path) -> dict[str, object]:
    """Start a host, SIGKILL it, and return the pids it left behind."""
    host = subprocess.Popen([sys.executable, "-c", HOST, str(state_dir)],
                            stdout=subprocess.PIPE)
    try:
        assert host.stdout is not None
        info = json.loads(await trio.to_thread.run_sync(host.stdout.readline))
    finally:
        host.kill()
        host.wait()
    polite = [pid for pid in info["workers"] if pid != info["stubborn"]]
    for pid in polite:
        await wait_gone(pid)  # the parent-death signal took the ordinary worker
    assert is_alive(info["stubborn"]) and is_alive(info["grandchild"])
    assert len(list((state_dir / "runs").glob("*.json"))) == 1
    return info


async def test_cleanup_kills_what_a_dead_host_left(tmp_path: Path) -> None:
    info = await orphaned_run(tmp_path)
    result = await trio.run_process(
        [sys.executable, "-m", "snakepit", "cleanup", "--state-dir", str(tmp_path)],
        capture_stdout=True)
    out = result.stdout.decode()
    assert f"killed pid {info['stubborn']} (recorded worker)" in out
    assert f"killed pid {info['grandchild']} (carries the run id)" in out
    await wait_gone(info["stubborn"])  # type: ignore[arg-type]
    await wait_gone(info["grandchild"])  # type: ignore[arg-type]
    assert not list((tmp_path / "runs").glob("*.json"))


async def test_a_new_pool_reaps_dead_runs_on_start(tmp_path: Path) -> None:
    info = await orphaned_run(tmp_path)
    async with snakepit.open_pool(size=1, state_dir=str(tmp_path)) as pool:
        await wait_gone(info["stubborn"])  # type: ignore[arg-type]
        await wait_gone(info["grandchild"])  # type: ignore[arg-type]
        # the live run's own file lists its worker
        record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
        assert [w["pid"] for w in record["workers"]] == [pool.workers()[0].pid]
    assert not list((tmp_path / "runs").glob("*.json"))  # removed as the run ends


def test_a_reused_pid_is_never_killed(tmp_path: Path) -> None:
    """A record whose pid now belongs to another process (other start time) is skipped."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs = tmp_path / "runs"
        runs.mkdir()
        (runs / "1-1.json").write_text(json.dumps({
            "run_id": "1-1", "host_pid": 1, "host_start": 1,  # pid 1's real start differs
            "workers": [{"pid": bystander.pid,
                         "start": (start_time(bystander.pid) or 0) - 1}],
        }))
        assert reap_orphans(tmp_path) == []
        assert is_alive(bystander.pid)
        assert not (runs / "1-1.json").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_live_hosts_are_left_alone(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path)
    registry.add(os.getpid())  # "a worker" that is this very process
    assert reap_orphans(tmp_path) == []
    assert registry.path.exists()
    registry.remove(os.getpid())
    assert not registry.path.exists()
