"""The enhanced bridge and refs, through a real pool."""

import pytest
import trio

import snakepit
from tests.conftest import kill_and_wait

ENHANCED = "snakepit.bridge.enhanced:EnhancedHandler"


def config(**overrides: object) -> snakepit.PoolConfig:
    options: dict[str, object] = {"size": 3, "handler": ENHANCED,
                                  "allowed_targets": ("json", "math", "fractions")}
    options.update(overrides)
    return snakepit.PoolConfig(**options)  # type: ignore[arg-type]


async def test_dynamic_calls_of_allowed_targets() -> None:
    async with snakepit.open_pool(config()) as pool:
        assert await pool.call("json.dumps", [1, 2]) == "[1, 2]"
        assert await pool.call("math.sqrt", 16) == 4.0
        assert await pool.call("json.dumps", {"b": 1, "a": 2}, sort_keys=True) == (
            '{"a": 2, "b": 1}')


async def test_targets_outside_the_allow_list_are_refused() -> None:
    async with snakepit.open_pool(config(size=1)) as pool:
        with pytest.raises(snakepit.RemoteError) as info:
            await pool.call("os.system", "echo pwned")
        assert info.value.remote_type.endswith("TargetNotAllowed")
        assert "allowed_targets" in info.value.remote_message
        with pytest.raises(snakepit.RemoteError, match="not under allowed_targets"):
            await pool.call("jsonx.dumps", 1)  # a prefix match is by module, not text


async def test_unencodable_results_come_back_as_refs_usable_later() -> None:
    async with snakepit.open_pool(config()) as pool:
        third = await pool.call("fractions.Fraction", 1, 3)
        assert isinstance(third, snakepit.Ref)
        assert third.type == "fractions.Fraction" and third.repr == "Fraction(1, 3)"
        assert await third.getattr("numerator") == 1
        assert await pool.call("math.floor", third) == 0  # a ref as an argument
        two_thirds = await pool.call("fractions.Fraction", 2, 3)
        rounded = await two_thirds.method("limit_denominator", 1)  # a method: another ref
        assert isinstance(rounded, snakepit.Ref) and rounded.pid == two_thirds.pid
        assert await rounded.getattr("numerator") == 1
        info = await third.inspect()
        assert info["type"] == "fractions.Fraction" and "limit_denominator" in info["attributes"]
        assert await third.release() is True
        with pytest.raises(snakepit.RemoteError, match="no object"):
            await third.getattr("numerator")


async def test_calls_with_refs_go_to_the_worker_that_holds_them() -> None:
    async with snakepit.open_pool(config()) as pool:
        refs = [await pool.call("fractions.Fraction", n, 7) for n in range(6)]
        assert len({ref.pid for ref in refs}) > 1  # spread over the workers

        async def floor_times_seven(ref: snakepit.Ref, n: int) -> None:
            numerator = await ref.getattr("numerator")
            assert numerator == n
            assert await pool.call("math.floor", ref) == 0

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                for n, ref in enumerate(refs):
                    nursery.start_soon(floor_times_seven, ref, n)


async def test_a_ref_whose_worker_died_is_ref_lost() -> None:
    async with snakepit.open_pool(config(size=2)) as pool:
        ref = await pool.call("fractions.Fraction", 1, 2)
        await kill_and_wait(pool, ref.pid)
        with pytest.raises(snakepit.RefLost):
            await ref.getattr("numerator")
        with pytest.raises(snakepit.RefLost):
            await pool.call("math.floor", ref)


async def test_pipeline_stores_and_reuses_results_in_one_worker() -> None:
    async with snakepit.open_pool(config()) as pool:
        made, floored, dumped = await pool.pipeline([
            {"target": "fractions.Fraction", "args": [7, 2], "store_as": "f"},
            {"target": "math.floor", "args": [{"$stored": "f"}], "store_as": "n"},
            {"target": "json.dumps", "args": [[{"$stored": "n"}, "done"]]},
        ])
        assert isinstance(made, snakepit.Ref) and made.id == "f"
        assert (floored, dumped) == (3, '[3, "done"]')
        assert await made.getattr("denominator") == 2  # kept under its name
        then = await pool.pipeline([{"ref": made, "name": "limit_denominator",
                                     "args": [1]}])
        assert isinstance(then[0], snakepit.Ref)


async def test_session_refs_are_freed_with_the_session() -> None:
    async with snakepit.open_pool(config(size=1)) as pool:
        async with pool.session() as s:
            ref = await s.call("fractions.Fraction", 5, 3)
            assert ref.session_id == s.id
            assert await ref.getattr("numerator") == 5
            assert (await pool.execute("info"))["sessions"] == [s.id]
        assert (await pool.execute("info"))["sessions"] == []
        with pytest.raises(snakepit.RemoteError, match="no object"):
            await ref.getattr("numerator")


async def test_refs_of_different_workers_cannot_meet_in_one_call() -> None:
    async with snakepit.open_pool(config(size=2)) as pool:
        first = await pool.call("fractions.Fraction", 1, 2)
        second = first
        for n in range(3, 20):  # calls spread over both workers
            second = await pool.call("fractions.Fraction", 1, n)
            if second.pid != first.pid:
                break
        assert second.pid != first.pid
        with pytest.raises(snakepit.PayloadError, match="different workers"):
            await pool.call("math.fsum", [first, second])
