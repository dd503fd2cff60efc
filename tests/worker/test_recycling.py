"""Recycling: max_calls and worker_ttl drain a worker while its replacement starts."""

import trio

import snakepit
from tests.conftest import chaos_config, started


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
        # max_calls counts calls sent, so pipelining cannot stretch it: every worker
        # took exactly five calls and retired, twelve in all
        assert stats.restarts == 60 // 5
        assert all(w.calls_served == 0 and w.accepting for w in pool.workers())


async def test_worker_ttl_replacement_serves_while_the_old_one_drains() -> None:
    # pipeline_depth=1: a call pipelined behind the long one would wait for it to end
    config = chaos_config(size=1, worker_ttl=0.3, pipeline_depth=1)
    async with snakepit.open_pool(config) as pool:
        old = pool.workers()[0].pid
        async with trio.open_nursery() as nursery:
            await started(pool, nursery, "sleep", {"seconds": 1.5})
            # the old worker retires at 0.3 s, mid-call; its replacement takes calls
            # at once, so the pool does not drop below its size while it drains
            with trio.fail_after(1.0):
                while (new := await pool.execute("pid")) == old:
                    pass
            assert pool.stats().workers[0].pid == new
        # the old worker's call completed normally (started() would have seen an error
        # only through the counters)
        assert pool.stats().failed == 0
        assert pool.stats().restarts >= 1
