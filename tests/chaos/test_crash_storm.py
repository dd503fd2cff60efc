"""A crash storm: workers SIGKILLed over and over while calls keep coming."""

import contextlib
import os
import random
import signal

import trio

import snakepit
from tests.conftest import chaos_config


async def storm(pool: snakepit.Pool, kills: int, rng: random.Random) -> None:
    """SIGKILL a random live worker every 20 ms until ``kills`` kills have landed (or
    every slot has failed: nothing is left to kill).

    Counted in kills, not seconds: how many land in a second depends on how fast the
    replacements start, which a loaded box slows down.
    """
    landed = 0
    while landed < kills and not all_failed(pool):
        workers = [w for w in pool.workers() if w.accepting]
        if workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(workers).pid, signal.SIGKILL)
                landed += 1
        await trio.sleep(0.02)  # the storm's pace, not a synchronisation


def all_failed(pool: snakepit.Pool) -> bool:
    return all(s.state == "failed" for s in pool.stats().workers)


async def load(pool: snakepit.Pool, outcomes: list[str], stop: trio.Event) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        try:
            assert await pool.execute("echo", i) == i
            outcomes.append("ok")
        except snakepit.WorkerCrashed:
            outcomes.append("crashed")
        except snakepit.PoolBroken:
            outcomes.append("broken")
            return


async def test_pool_recovers_when_the_storm_ends() -> None:
    policy = snakepit.RestartPolicy(max_restarts=10_000, period=60, backoff_initial=0.005,
                                    backoff_max=0.02)
    async with snakepit.open_pool(chaos_config(size=4, restart=policy)) as pool:
        outcomes: list[str] = []
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(load, pool, outcomes, stop)
            with trio.fail_after(60):
                await storm(pool, 12, random.Random(1))
            stop.set()
        assert set(outcomes) <= {"ok", "crashed"} and "ok" in outcomes  # only typed errors
        with trio.fail_after(10):
            await pool.wait_ready()
        assert len([w for w in pool.workers() if w.accepting]) == 4
        assert all(s.state == "ready" for s in pool.stats().workers)
        assert [await pool.execute("echo", n) for n in range(20)] == list(range(20))


async def test_restart_intensity_holds_under_the_storm() -> None:
    # no cool-down: a slot that failed early must not come back while the others fail
    policy = snakepit.RestartPolicy(max_restarts=3, period=60, backoff_initial=0.005,
                                    backoff_max=0.01, cooldown=None)
    async with snakepit.open_pool(chaos_config(size=3, restart=policy)) as pool:
        outcomes: list[str] = []
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load, pool, outcomes, stop)
            rng = random.Random(2)
            with trio.fail_after(60):
                while not all_failed(pool):
                    await storm(pool, 1, rng)
            stop.set()
        assert set(outcomes) <= {"ok", "crashed", "broken"}
        stats = pool.stats()
        # every slot gave up after exactly max_restarts restarts: no endless loop
        assert [w.restarts for w in stats.workers] == [3, 3, 3]
        assert [w.state for w in stats.workers] == ["failed"] * 3
        try:
            await pool.execute("echo", 1)
        except snakepit.PoolBroken:
            pass
        else:
            raise AssertionError("a pool whose slots all failed must say so")
