"""Sessions on real workers: state across calls, affinity in both modes, TTL expiry."""

import os
import signal

import pytest
import trio
import trio.testing
import trio_util
from trio.testing import MockClock

import snakepit
from snakepit.worker.worker import Worker
from tests.conftest import chaos_config, kill_and_wait, mock_clock_config, wall_clock_limit


@pytest.fixture
def drops(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """(pid, session id) of every drop frame the host sends, as it sends them."""
    sent: list[tuple[int, str]] = []
    send = Worker.drop_session

    def recording(worker: Worker, session_id: str) -> None:
        sent.append((worker.pid, session_id))
        send(worker, session_id)

    monkeypatch.setattr(Worker, "drop_session", recording)
    return sent


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


async def test_ending_a_session_tells_only_the_worker_that_ran_it(
        drops: list[tuple[int, str]]) -> None:
    async with snakepit.open_pool(chaos_config(size=3)) as pool:
        async with pool.session(session_id="used") as s:
            bound = await s.execute("pid")
        async with pool.session(session_id="unused"):
            pass
        assert drops == [(bound, "used")]  # one frame, not one per worker


async def test_ending_the_session_clears_the_workers_state() -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        async with pool.session(session_id="s1") as s:
            await s.execute("incr")
            assert await pool.execute("session_ids") == ["s1"]
        assert await pool.execute("session_ids") == []
        assert len(pool.sessions) == 0
        with pytest.raises(snakepit.SessionNotFound):
            await pool.execute_in_session("s1", "incr")


class Expiries:
    """The ``session.expired`` events, awaitable (the sweeper's work, not a lookup's)."""

    def __init__(self) -> None:
        self.ids = trio_util.AsyncValue[tuple[str, ...]](())
        self._handler = snakepit.telemetry.attach(
            "session.expired", lambda _e, _m, meta: setattr(
                self.ids, "value", (*self.ids.value, meta["session"])))

    def __enter__(self) -> "Expiries":
        return self

    def __exit__(self, *exc: object) -> None:
        snakepit.telemetry.detach(self._handler)


# TTL tests run on trio's MockClock: the TTL passes when the test says so, never because
# a loaded box was slow between two calls.
async def test_ttl_expiry_clears_worker_state_and_the_store(mock_clock: MockClock) -> None:
    with Expiries() as expiries, wall_clock_limit(60):
        async with snakepit.open_pool(mock_clock_config(size=1)) as pool:
            session = pool.sessions.create("short", ttl=10)
            assert await pool.execute_in_session(session.id, "incr") == 1
            mock_clock.jump(9.9)
            assert await pool.execute("session_ids") == ["short"]
            mock_clock.jump(0.1)
            await expiries.ids.wait_value(("short",))  # the sweeper expired it
            assert await pool.execute("session_ids") == []
            with pytest.raises(snakepit.SessionNotFound):
                await pool.execute_in_session("short", "incr")
            assert pool.sessions.stats().expired == 1


async def test_a_shorter_ttl_wakes_the_sweeper_sooner(mock_clock: MockClock) -> None:
    with Expiries() as expiries, wall_clock_limit(60):
        async with snakepit.open_pool(mock_clock_config(size=1)) as pool:
            pool.sessions.create("long", ttl=100)
            await trio.testing.wait_all_tasks_blocked()  # the sweeper waits for t=100
            pool.sessions.create("short", ttl=10)
            mock_clock.jump(10)
            await expiries.ids.wait_value(("short",))
            assert "long" in pool.sessions


async def test_prefer_falls_back_to_another_worker_when_the_bound_one_is_busy(
        drops: list[tuple[int, str]]) -> None:
    # default pipeline_depth (2): the bound worker has a free pipelined unit, but a
    # prefer call must not queue behind the running call when another worker is idle
    async with snakepit.open_pool(chaos_config(size=2)) as pool:
        async with pool.session(mode="prefer", session_id="s") as s:
            bound = await s.execute("pid")
            async with trio.open_nursery() as nursery:
                await started_in_session(pool, nursery, s.id)
                with trio.fail_after(5):  # did not wait for the 60 s nap
                    fallback = await s.execute("pid")
                    assert fallback != bound
                    assert await s.execute("incr") == 1  # state there, on the fallback
                nursery.cancel_scope.cancel()
            assert s.record.worker_pid == bound  # the binding itself is unchanged
        # ending the session told both workers that ran its calls to drop its state
        assert sorted(drops) == sorted([(bound, "s"), (fallback, "s")])
        assert len(pool.sessions) == 0


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


@pytest.mark.parametrize("mode", ["strict", "prefer"])
async def test_bound_worker_recycled(mode: str) -> None:
    # max_calls=3: the session's third call retires its worker (as it is sent); the
    # replacement does not have the session's state
    async with snakepit.open_pool(chaos_config(size=2, max_calls=3)) as pool:
        async with pool.session(mode=mode) as s:
            assert [await s.execute("incr") for _ in range(3)] == [1, 2, 3]
            first = s.record.worker_pid
            if mode == "strict":
                with pytest.raises(snakepit.SessionWorkerLost, match="recycled"):
                    await s.execute("incr")
            assert await s.execute("incr") == 1  # bound afresh, with empty state
            assert s.record.worker_pid != first


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


async def test_a_long_call_keeps_its_session_alive(mock_clock: MockClock) -> None:
    with Expiries() as expiries, wall_clock_limit(60):
        async with snakepit.open_pool(mock_clock_config(size=1)) as pool:
            async with pool.session(ttl=10) as s:
                assert await s.execute("incr") == 1
                async with trio.open_nursery() as nursery:
                    await started_in_session(pool, nursery, s.id)
                    mock_clock.jump(30)  # three TTLs pass while its call runs
                    await trio.testing.wait_all_tasks_blocked()  # the sweeper looked
                    nursery.cancel_scope.cancel()
                assert await s.execute("incr") == 2  # neither expired nor reset
            assert expiries.ids.value == ()


async def test_leaving_a_session_that_already_expired_is_quiet(mock_clock: MockClock) -> None:
    with wall_clock_limit(60):
        async with snakepit.open_pool(mock_clock_config(size=1)) as pool:
            async with pool.session(ttl=10) as s:
                await s.execute("incr")
                mock_clock.jump(10)
            assert len(pool.sessions) == 0
