"""Sessions on real workers: state across calls, affinity in both modes, TTL expiry."""

import os
import signal

import pytest
import trio
import trio.testing

import snakepit
from tests.conftest import chaos_config, kill_and_wait


async def test_state_persists_across_calls_and_calls_stay_on_one_worker() -> None:
    async with snakepit.open_pool(chaos_config(size=3)) as pool:
        async with pool.session() as s:
            pids = set()
            for expected in range(1, 6):
                assert await s.execute("incr") == expected
                pids.add(await s.execute("pid"))
            assert len(pids) == 1
            assert s.record.worker_pid in pids
        async with pool.session() as other:  # a new session starts from zero
            assert await other.execute("incr") == 1


async def test_unknown_session_is_session_not_found() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        with pytest.raises(snakepit.SessionNotFound):
            await pool.execute_in_session("nope", "incr")


async def test_ending_the_session_clears_the_workers_state() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        async with pool.session(session_id="s1") as s:
            await s.execute("incr")
            assert await pool.execute("session_ids") == ["s1"]
        assert await pool.execute("session_ids") == []
        assert len(pool.sessions) == 0
        with pytest.raises(snakepit.SessionNotFound):
            await pool.execute_in_session("s1", "incr")


async def test_ttl_expiry_clears_worker_state_and_the_store() -> None:
    expired = trio.Event()
    handler = snakepit.telemetry.attach("session.expired", lambda *_: expired.set())
    try:
        async with snakepit.open_pool(chaos_config(size=1)) as pool:
            session = pool.sessions.create("short", ttl=0.3)
            assert await pool.execute_in_session(session.id, "incr") == 1
            assert await pool.execute("session_ids") == ["short"]
            with trio.fail_after(5):
                await expired.wait()  # the sweeper, not a lookup, expired it
            assert await pool.execute("session_ids") == []
            with pytest.raises(snakepit.SessionNotFound):
                await pool.execute_in_session("short", "incr")
            assert pool.sessions.stats().expired == 1
    finally:
        snakepit.telemetry.detach(handler)


async def test_prefer_falls_back_to_another_worker_when_the_bound_one_is_busy() -> None:
    # default pipeline_depth (2): the bound worker has a free pipelined unit, but a
    # prefer call must not queue behind the running call when another worker is idle
    async with snakepit.open_pool(chaos_config(size=2)) as pool:
        async with pool.session(mode="prefer", session_id="s") as s:
            bound = await s.execute("pid")
            async with trio.open_nursery() as nursery:
                await started_in_session(pool, nursery, s.id)
                with trio.fail_after(5):  # did not wait for the 60 s nap
                    assert await s.execute("pid") != bound
                    assert await s.execute("incr") == 1  # state there, on the fallback
                nursery.cancel_scope.cancel()
            assert s.record.worker_pid == bound  # the binding itself is unchanged
        # ending the session dropped its state on every worker, the fallback's too
        for _ in range(2):
            assert await pool.execute("session_ids") == []


async def test_strict_waits_for_the_bound_worker() -> None:
    async with snakepit.open_pool(chaos_config(size=2, pipeline_depth=1)) as pool:
        async with pool.session(mode="strict") as s:
            bound = await s.execute("pid")
            async with trio.open_nursery() as nursery:
                cancel_nap = await started_in_session(pool, nursery, s.id)
                result: list[int] = []

                async def strict_call() -> None:
                    result.append(await s.execute("pid"))

                nursery.start_soon(strict_call)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.stats().queue_depth == 1  # waiting, although a worker is idle
                cancel_nap()
            assert result == [bound]


@pytest.mark.parametrize("mode", ["strict", "prefer"])
async def test_bound_worker_dying(mode: str) -> None:
    async with snakepit.open_pool(chaos_config(size=2)) as pool:
        async with pool.session(mode=mode) as s:
            assert await s.execute("incr") == 1
            assert await s.execute("incr") == 2
            await kill_and_wait(pool, await s.execute("pid"))
            if mode == "strict":
                # never silently run on a worker that lacks the session's state
                with pytest.raises(snakepit.SessionWorkerLost):
                    await s.execute("incr")
            # the session goes on, on a worker with empty state
            assert await s.execute("incr") == 1
            assert s.record.lost is False


async def test_strict_caller_waiting_for_a_worker_that_dies_is_told() -> None:
    async with snakepit.open_pool(chaos_config(size=2, pipeline_depth=1)) as pool:
        async with pool.session(mode="strict") as s:
            pid = await s.execute("pid")
            errors: list[BaseException] = []
            async with trio.open_nursery() as nursery:
                await started_in_session(pool, nursery, s.id)

                async def waiting_call() -> None:
                    try:
                        await s.execute("pid")
                    except snakepit.SnakepitError as exc:
                        errors.append(exc)

                nursery.start_soon(waiting_call)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.stats().queue_depth == 1
                os.kill(pid, signal.SIGKILL)
            assert [type(e) for e in errors] == [snakepit.SessionWorkerLost]
            # told once: the next call binds afresh, with empty state
            with trio.fail_after(10):
                assert await s.execute("incr") == 1


async def test_session_stream_sees_session_state() -> None:
    async with snakepit.open_pool(chaos_config(size=2)) as pool:
        async with pool.session() as s:
            assert await s.execute("incr") == 1
            async with s.stream("session_counts", {"n": 3}) as chunks:
                assert [c async for c in chunks] == [2, 3, 4]
            assert await s.execute("incr") == 5


async def test_session_metadata_and_stats() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        async with pool.session(metadata={"user": "ada"}) as s:
            pool.sessions.update_metadata(s.id, step=1)
            assert s.record.metadata == {"user": "ada", "step": 1}
            assert pool.stats().sessions == 1
        assert pool.stats().sessions == 0


async def started_in_session(pool: snakepit.Pool, nursery: trio.Nursery, session_id: str):  # type: ignore[no-untyped-def]
    """Start a cooperative nap in the session; return once the worker runs it."""
    running = trio.Event()
    scope = trio.CancelScope()

    async def nap() -> None:
        with scope:
            try:
                await pool.execute_in_session(session_id, "nap", {"seconds": 60},
                                              on_progress=lambda *_: running.set())
            except snakepit.SnakepitError:
                pass

    nursery.start_soon(nap)
    await running.wait()
    return scope.cancel


async def test_a_long_call_keeps_its_session_alive() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        async with pool.session(ttl=0.2) as s:
            assert await s.execute("incr") == 1
            await s.execute("sleep", {"seconds": 0.6})  # three TTLs long
            assert await s.execute("incr") == 2  # neither expired nor reset


async def test_a_long_stream_keeps_its_session_alive() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        async with pool.session(ttl=0.1) as s:
            assert await s.execute("incr") == 1
            got = []
            async with s.stream("session_counts", {"n": 3}, window=1) as chunks:
                async for chunk in chunks:
                    got.append(chunk)
                    # a slow consumer: three TTLs between chunks -- the condition under
                    # test, not a synchronisation
                    await trio.sleep(0.3)
                    assert len(pool.sessions) == 1
            assert got == [2, 3, 4]  # the worker's state was never dropped
            assert await s.execute("incr") == 5


async def test_leaving_a_session_that_already_expired_is_quiet() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        async with pool.session(ttl=0.05) as s:
            await s.execute("incr")
            await trio.sleep(0.1)  # the TTL lapses: the point of this test, not a sync
        assert len(pool.sessions) == 0
