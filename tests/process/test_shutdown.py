"""Leaving the pool by any route stops every process, grandchildren included."""

import json
import os
import signal
import subprocess
import sys

import pytest
import trio

import snakepit
from tests.conftest import chaos_config, is_alive, started


async def wait_gone(pid: int, timeout: float = 10) -> None:
    """Wait, on a pidfd (no polling), until ``pid`` has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with trio.fail_after(timeout):
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


async def test_normal_exit_stops_workers_cleanly() -> None:
    async with snakepit.open_pool(chaos_config(size=2)) as pool:
        workers = pool.workers()
        pids = [w.pid for w in workers]
    assert [w.process.returncode for w in workers] == [0, 0]  # exited on the shutdown frame
    assert not any(is_alive(pid) for pid in pids)


async def test_exit_by_exception_stops_workers() -> None:
    with pytest.raises(KeyError):
        async with snakepit.open_pool(chaos_config(size=2)) as pool:
            pids = [w.pid for w in pool.workers()]
            raise KeyError("boom")
    assert not any(is_alive(pid) for pid in pids)


async def test_exit_by_cancellation_stops_workers_even_mid_call() -> None:
    pids: list[int] = []
    with trio.CancelScope() as scope:
        async with snakepit.open_pool(chaos_config(size=2)) as pool:
            pids = [w.pid for w in pool.workers()]
            async with trio.open_nursery() as nursery:
                await started(pool, nursery, "sleep", {"seconds": 60})
                scope.cancel()  # with the sleep running in a worker
                await trio.sleep_forever()
    assert scope.cancelled_caught
    assert len(pids) == 2
    assert not any(is_alive(pid) for pid in pids)


async def test_ladder_escalates_to_sigterm_then_sigkill() -> None:
    # kill_timeout: ample for a clean exit on SIGTERM under load; the stubborn worker
    # costs that long before its SIGKILL. cancel_grace: no watchdog kill may preempt
    # the ladder for the calls cancelled below.
    config = chaos_config(size=2, shutdown_grace=0.2, kill_timeout=5.0, cancel_grace=60)
    async with snakepit.open_pool(config) as pool:
        workers = sorted(pool.workers(), key=lambda w: w.id)
        stubborn = workers[0]
        # the first ignores SIGTERM; both are stuck in a call when the pool closes
        await pool.execute("ignore_term")
        assert pool.workers()[0] is stubborn or pool.workers()[1] is stubborn
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                await started(pool, nursery, "sleep", {"seconds": 60})
            nursery.cancel_scope.cancel()
    codes = {w.id: w.process.returncode for w in workers}
    # which worker ran ignore_term is up to the dispatcher: one died by SIGKILL,
    # the other exited on SIGTERM (its handler turns SIGTERM into a clean exit)
    assert sorted(codes.values()) == [-signal.SIGKILL, 0]


async def test_grandchildren_die_with_the_pool() -> None:
    async with snakepit.open_pool(chaos_config(size=2)) as pool:
        grandchild = await pool.execute("spawn_child")
        assert is_alive(grandchild)
    await wait_gone(grandchild)
    assert not is_alive(grandchild)


async def test_grandchildren_die_when_their_worker_crashes() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        grandchild = await pool.execute("spawn_child")
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("crash")
        await wait_gone(grandchild)
        await pool.wait_ready()


HOST = """
import json, sys, trio, snakepit
async def main():
    async with snakepit.open_pool(size=3) as pool:
        print(json.dumps([w.pid for w in pool.stats().workers]), flush=True)
        await trio.sleep_forever()
trio.run(main)
"""


async def test_sigkilled_host_takes_its_workers_along() -> None:
    host = subprocess.Popen([sys.executable, "-c", HOST], stdout=subprocess.PIPE)
    try:
        assert host.stdout is not None
        line = await trio.to_thread.run_sync(host.stdout.readline)
        pids = json.loads(line)
        assert len(pids) == 3 and all(is_alive(p) for p in pids)
        host.kill()  # SIGKILL: no cleanup code runs in the host
        host.wait()
        for pid in pids:
            await wait_gone(pid)  # parent-death signal
    finally:
        host.kill()
        host.wait()


class Unkillable:
    """A handle on a process that SIGKILL does not end (uninterruptible sleep in a
    driver): its exit never comes. For the ladder's bound, at the unit level."""

    pid = 4_000_000  # above pid_max: nothing real is ever signalled
    returncode = None

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.abandoned = False

    def signal_group(self, signum: int) -> None:
        self.signals.append(signum)

    async def wait_exit(self) -> None:
        # 30 s: forever, as far as the ladder is concerned (a ladder without the bound
        # fails the test after that rather than hang it: the ladder is shielded)
        await trio.sleep(30)

    def reap(self) -> int:
        raise AssertionError("reaped a process that never exited")

    def abandon(self) -> None:
        self.abandoned = True


async def test_the_wait_after_sigkill_is_bounded_too(
        caplog: pytest.LogCaptureFixture) -> None:
    # Real time: the ladder waits on processes in real time even under a MockClock.
    from snakepit.process.shutdown import shutdown_ladder

    process = Unkillable()
    asked: list[bool] = []
    start = trio.current_time()
    code = await shutdown_ladder(process, request_shutdown=lambda: asked.append(True),
                                 grace=0.3, kill_timeout=0.2)
    elapsed = trio.current_time() - start
    assert code is None
    assert 0.3 + 2 * 0.2 <= elapsed < 0.3 + 2 * 0.2 + 5.0  # slack for a loaded box
    assert asked == [True] and process.signals == [signal.SIGTERM, signal.SIGKILL]
    assert process.abandoned
    assert any(str(process.pid) in r.getMessage() and "snakepit cleanup" in r.getMessage()
               for r in caplog.records if r.levelname == "ERROR")


async def test_closing_a_pool_whose_workers_outlive_sigkill_returns_in_bounded_time(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Real workers whose exit the host never sees (as with a process in uninterruptible
    sleep): leaving the pool takes shutdown_grace + 2 x kill_timeout, then gives up."""
    import snakepit.worker.run
    from snakepit.process.launch import OsProcess

    class ExitNeverSeen(OsProcess):
        async def wait_exit(self) -> None:
            # 30 s: for good, as far as the ladder is concerned (a ladder without the
            # bound makes the test fail on its timing rather than hang)
            await trio.sleep(30)
            await super().wait_exit()

    spawned: list[OsProcess] = []
    real_spawn = snakepit.worker.run.spawn

    def spawn(*args: object, **kwargs: object) -> OsProcess:
        process = real_spawn(*args, **kwargs)  # type: ignore[arg-type]
        process.__class__ = ExitNeverSeen
        spawned.append(process)
        return process

    monkeypatch.setattr(snakepit.worker.run, "spawn", spawn)
    config = chaos_config(size=2, shutdown_grace=0.5, kill_timeout=0.5)
    async with snakepit.open_pool(config) as pool:
        assert await pool.execute("echo", 1) == 1
        closing = trio.current_time()
    elapsed = trio.current_time() - closing
    print(f"aclose took {elapsed:.2f}s (bound {0.5 + 2 * 0.5:.1f}s + scheduling)")
    assert 0.5 + 2 * 0.5 <= elapsed < 0.5 + 2 * 0.5 + 5.0
    abandoned = [r for r in caplog.records if "did not exit" in r.getMessage()]
    assert sorted(str(p.pid) in r.getMessage() for p in spawned for r in abandoned).count(
        True) == 2
    # left to the run registry (and `snakepit cleanup`): their records stay
    from snakepit.worker.run import registry
    record = json.loads(registry(config).path.read_text())
    assert {p.pid for p in spawned} <= {worker["pid"] for worker in record["workers"]}
    for process in spawned:  # each is reaped by its daemon thread once it has exited
        assert process._popen is not None
        await trio.to_thread.run_sync(process._popen.wait, 10)
        assert process.returncode is not None
        registry(config).remove(process.pid)  # what the reaper would do, next time
