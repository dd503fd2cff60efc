"""Recycling: max_calls and worker_ttl drain a worker while its replacement starts."""

import trio

import snakepit
from tests.conftest import chaos_config


async def test_max_calls_recycles_without_dropping_a_call() -> None:
    async with snakepit.open_pool(chaos_config(size=2, max_calls=5)) as pool:
        results: list[int] = []

        async def call(i: int) -> None:
            results.append(await pool.execute("echo", i))

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(call, i)
        assert sorted(results) == list(range(60))  # every call answered, none lost
        await pool.wait_ready()
        stats = pool.stats()
        assert stats.failed == 0
        # max_calls counts calls sent, so pipelining cannot stretch it: every retired
        # worker took exactly five calls, and the current ones fewer. (How the last
        # calls split between the two current workers depends on scheduling.)
        current = pool.workers()
        assert all(w.accepting and w.calls_started < 5 for w in current)
        assert stats.restarts * 5 + sum(w.calls_started for w in current) == 60


async def test_worker_ttl_replacement_serves_while_the_old_one_drains() -> None:
    # pipeline_depth=1: a call pipelined behind the long one would wait for it to end
    config = chaos_config(size=1, worker_ttl=0.5, pipeline_depth=1)
    exited: dict[int, trio.Event] = {}
    handler = snakepit.telemetry.attach(
        "worker.exited", lambda _e, _m, meta: exited.setdefault(meta["pid"], trio.Event()).set())
    try:
        async with snakepit.open_pool(config) as pool:
            old = pool.workers()[0]
            outcome: list[BaseException] = []
            async with trio.open_nursery() as nursery:
                cancel = trio.CancelScope()

                async def long_call() -> None:
                    with cancel:
                        try:
                            await pool.execute("nap", {"seconds": 60},
                                               on_progress=lambda *_: running.set())
                        except snakepit.SnakepitError as exc:
                            outcome.append(exc)

                running = trio.Event()
                nursery.start_soon(long_call)
                await running.wait()
                # the old worker retires at its ttl, mid-call; its replacement takes
                # calls at once, so the pool does not drop below its size while it drains
                with trio.fail_after(20):
                    while (new := await pool.execute("pid")) == old.pid:
                        pass
                assert not old.accepting and old.in_flight == 1  # still draining its call
                assert pool.stats().workers[0].in_flight == 1  # and the stats count it
                assert old.pid not in exited
                cancel.cancel()
            assert outcome == []  # the long call was ours to end: it never failed
            with trio.fail_after(20):
                await exited.setdefault(old.pid, trio.Event()).wait()  # drained, it exits
            assert new != old.pid and pool.stats().restarts >= 1
    finally:
        snakepit.telemetry.detach(handler)
