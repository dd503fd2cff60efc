"""The enhanced bridge and refs, through a real pool."""

import pytest
import trio
import trio.testing

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
        with pytest.raises(snakepit.RefLost, match="no object"):
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
        with pytest.raises(snakepit.SessionNotFound):
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


# -- the allow-list: what a target or a ref may reach -------------------------------------
DEFAULT = snakepit.PoolConfig(size=1, handler=ENHANCED)


@pytest.mark.parametrize("target", [
    "json.codecs.builtins.eval",  # a module json imported, then its builtins
    "statistics.sys.modules",     # a module statistics imported
    "fractions.operator.attrgetter",
    "json.decoder.re.compile",    # json.decoder is allowed (under json), re is not
    "json.__builtins__",          # dunder
    "json._default_encoder",      # private
    "datetime.datetime_CAPI",     # not owned by datetime: a capsule of builtins
    "operator.attrgetter",        # no longer in the default list
    "functools.reduce",
    "string.Formatter",
])
async def test_default_targets_cannot_reach_what_their_modules_imported(target: str) -> None:
    async with snakepit.open_pool(DEFAULT) as pool:
        with pytest.raises(snakepit.RemoteError) as info:
            await pool.call(target, "__import__('os').getpid()")
        assert info.value.remote_type.endswith("TargetNotAllowed"), info.value
        assert await pool.call("statistics.mean", [1, 2, 3]) == 2  # still serving


async def test_dunders_are_refused_even_in_allowed_modules() -> None:
    async with snakepit.open_pool(config(size=1, allowed_targets=("functools", "json"))
                                  ) as pool:
        for target in ("functools.__builtins__", "functools.reduce.__self__",
                       "json.dumps.__globals__"):
            with pytest.raises(snakepit.RemoteError, match="private name"):
                await pool.call(target)
        assert await pool.call("json.dumps", [1]) == "[1]"


async def test_reexported_builtins_and_modules_are_refused(tmp_path: object) -> None:
    from tests.conftest import support_env

    pool_config = config(size=1, allowed_targets=("reexports",), env=support_env())
    async with snakepit.open_pool(pool_config) as pool:
        assert await pool.call("reexports.double", 21) == 42  # defined there: allowed
        for target in ("reexports.eval", "reexports.getattr", "reexports.open",
                       "reexports.os.system", "reexports.sys.modules"):
            with pytest.raises(snakepit.RemoteError) as info:
                await pool.call(target, "1 + 1")
            assert info.value.remote_type.endswith("TargetNotAllowed"), target


async def test_refs_reach_only_public_owned_attributes() -> None:
    from tests.conftest import support_env

    pool_config = config(size=1, allowed_targets=("reexports", "fractions"),
                         env=support_env())
    async with snakepit.open_pool(pool_config) as pool:
        holder = await pool.call("reexports.Holder")
        assert isinstance(holder, snakepit.Ref)
        assert await holder.getattr("value") == 3
        for name in ("__class__", "__dict__", "_private", "again.system"):
            with pytest.raises(snakepit.RemoteError, match="not reachable remotely"):
                await holder.getattr(name)
        with pytest.raises(snakepit.RemoteError, match="module 'sys'"):
            await holder.getattr("modules")  # a module not allowed
        with pytest.raises(snakepit.RemoteError, match="outside allowed_targets"):
            await holder.method("system", "echo pwned")  # os.system, stored on the object
        with pytest.raises(snakepit.RemoteError, match="not reachable remotely"):
            await holder.method("__class__")
        # a builtin that allowed code handed out stays inert: not callable, not passable
        evaluator = await holder.method("give_eval")
        assert isinstance(evaluator, snakepit.Ref) and evaluator.type == (
            "builtins.builtin_function_or_method")
        with pytest.raises(snakepit.RemoteError, match="cannot be called remotely"):
            await evaluator.call("__import__('os').getpid()")
        with pytest.raises(snakepit.RemoteError, match="cannot be passed"):
            await pool.call("reexports.apply", evaluator, "__import__('os').getpid()")
        third = await pool.call("fractions.Fraction", 1, 3)
        limit = await third.getattr("limit_denominator")  # an owned bound method...
        zero = await pool.call("reexports.apply", limit, 1)  # ...may be passed
        assert isinstance(zero, snakepit.Ref) and zero.repr == "Fraction(0, 1)"


async def test_a_stored_format_string_cannot_read_private_attributes() -> None:
    async with snakepit.open_pool(config(size=1)) as pool:
        third = await pool.call("fractions.Fraction", 1, 3)
        await pool.execute("store", {"name": "template",
                                     "value": "{0.__init__.__globals__[sys].modules}"})
        template = snakepit.Ref(pool, id="template", type="builtins.str", repr="",
                                worker=third.worker, pid=third.pid, session_id=None)
        with pytest.raises(snakepit.RemoteError, match="TargetNotAllowed"):
            await template.method("format", third)
        assert await template.method("upper") == "{0.__INIT__.__GLOBALS__[SYS].MODULES}"
    async with snakepit.open_pool(DEFAULT) as pool:  # collections is allowed by default
        wrapped = await pool.call("collections.UserString", "{0.__init__.__globals__}")
        for name in ("format", "format_map"):
            with pytest.raises(snakepit.RemoteError, match="format fields"):
                await wrapped.method(name, wrapped)


# -- the store commands and inspect --------------------------------------------------------
async def test_store_retrieve_list_and_delete_by_name() -> None:
    async with snakepit.open_pool(config(size=1)) as pool:
        assert await pool.execute("store", {"name": "greeting", "value": {"a": [1, 2]}}) == (
            "greeting")
        third = await pool.call("fractions.Fraction", 1, 3)
        # a stored ref under a name: the name keeps the object however the ref goes
        assert await pool.execute("store", {"name": "third",
                                            "value": {"__snakepit_ref__": third.id}}) == "third"
        assert await pool.execute("retrieve", {"name": "greeting"}) == {"a": [1, 2]}
        listed = await pool.execute("list")
        assert listed == {"greeting": "builtins.dict", third.id: "fractions.Fraction",
                          "third": "fractions.Fraction"}
        assert await third.release() is True
        kept = await pool.invoke("math.floor", [{"$stored": "third"}])
        assert kept == 0  # the named entry outlived the ref
        assert await pool.execute("delete", {"name": "greeting"}) is True
        assert await pool.execute("delete", {"name": "greeting"}) is False
        assert await pool.execute("list") == {"third": "fractions.Fraction"}
        with pytest.raises(snakepit.RemoteError, match="no object 'greeting'"):
            await pool.execute("retrieve", {"name": "greeting"})


async def test_inspect_a_target_gives_signature_doc_and_attributes() -> None:
    async with snakepit.open_pool(config(size=1)) as pool:
        info = await pool.execute("inspect", {"target": "json.dumps"})
        assert info["callable"] is True and info["type"] == "builtins.function"
        assert info["signature"].startswith("(obj, *, skipkeys=False")
        assert info["doc"].startswith("Serialize ``obj`` to a JSON formatted ``str``")
        fraction = await pool.execute("inspect", {"target": "fractions.Fraction"})
        assert "limit_denominator" in fraction["attributes"]
        assert not any(name.startswith("_") for name in fraction["attributes"])
        with pytest.raises(snakepit.RemoteError, match="TargetNotAllowed"):
            await pool.execute("inspect", {"target": "json.codecs"})


# -- lifetimes -----------------------------------------------------------------------------
async def objects_in(pool: snakepit.Pool) -> dict[str, object]:
    """The worker's own count of stored objects (a one-worker pool)."""
    counts: dict[str, object] = (await pool.execute("info"))["objects"]
    return counts


async def test_global_refs_live_while_the_host_holds_them() -> None:
    async with snakepit.open_pool(config(size=1)) as pool:
        kept = await pool.call("fractions.Fraction", 1, 7)
        for n in range(50):  # each result dropped at once: a leak before refs had lives
            await pool.call("fractions.Fraction", 1, n + 2)
        await pool.collect_refs()
        assert (await objects_in(pool))["global"] == 1
        assert await kept.getattr("denominator") == 7  # the held one is still there
        del kept
        await pool.collect_refs()
        assert (await objects_in(pool))["global"] == 0


async def test_a_method_returning_the_same_object_returns_the_same_ref() -> None:
    async with snakepit.open_pool(config(size=1, allowed_targets=("decimal",))) as pool:
        number = await pool.call("decimal.Decimal", "1.50")
        for _ in range(3):
            same = await number.method("canonical")  # returns self
            assert same.id == number.id
        assert (await objects_in(pool))["global"] == 1
        del same
        await pool.collect_refs()  # a copy went: the object stays for the other
        assert await number.method("to_eng_string") == "1.50"
        del number
        await pool.collect_refs()
        assert (await objects_in(pool))["global"] == 0


async def test_released_refs_are_ref_lost_and_named_objects_stay() -> None:
    async with snakepit.open_pool(config(size=1)) as pool:
        first, second = [await pool.call("fractions.Fraction", 1, n) for n in (2, 3)]
        assert await pool.release(first, second) == 2
        assert await pool.release(first) == 0  # already gone
        with pytest.raises(snakepit.RefLost, match="no object"):
            await second.getattr("numerator")
        made, = await pool.pipeline([{"target": "fractions.Fraction", "args": [1, 4],
                                      "store_as": "quarter"}])
        del made
        await pool.collect_refs()
        assert await pool.execute("list") == {"quarter": "fractions.Fraction"}


# -- sessions ------------------------------------------------------------------------------
async def test_refs_stay_in_their_scope() -> None:
    async with snakepit.open_pool(config(size=1)) as pool:
        outside = await pool.call("fractions.Fraction", 1, 2)
        async with pool.session() as s, pool.session() as t:
            with pytest.raises(snakepit.PayloadError, match=r"global store.*use it outside"):
                await s.call("math.floor", outside)
            inside = await s.call("fractions.Fraction", 3, 2)
            with pytest.raises(snakepit.PayloadError, match="in its own session"):
                await t.call("math.floor", inside)
            with pytest.raises(snakepit.PayloadError, match="different scopes"):
                await pool.call("math.fsum", [inside, outside])
            assert await pool.call("math.floor", inside) == 1  # its session, implicitly
        with pytest.raises(snakepit.SessionNotFound):
            await inside.getattr("numerator")


async def test_an_expired_session_frees_its_objects(mock_clock: trio.testing.MockClock
                                                    ) -> None:
    mock_clock.rate = 1.0  # real time, plus jumps
    expired = trio.Event()
    handler = snakepit.telemetry.attach("session.expired", lambda *_: expired.set())
    try:
        # no heartbeats or health checks: the jumps would make the worker look hung
        async with snakepit.open_pool(config(size=1, heartbeat_interval=None,
                                             health_check_interval=None)) as pool:
            async with pool.session(ttl=3600) as s:
                refs = [await s.call("fractions.Fraction", 1, n) for n in (2, 3)]
                assert (await objects_in(pool))["sessions"] == {s.id: 2}
                mock_clock.jump(1800)
                assert await refs[0].getattr("numerator") == 1  # a ref call keeps it alive
                mock_clock.jump(1801)  # past the TTL counted from the session's own call
                assert (await objects_in(pool))["sessions"] == {s.id: 2}  # the sweeper ran
                assert not expired.is_set()
                mock_clock.jump(3601)  # the sweeper looks again a TTL after its last look
                with trio.fail_after(30):
                    await expired.wait()
                assert (await objects_in(pool))["sessions"] == {}
                with pytest.raises(snakepit.SessionNotFound):
                    await refs[1].getattr("numerator")
    finally:
        snakepit.telemetry.detach(handler)


async def test_timeout_is_the_calls_deadline_and_invoke_passes_one_to_the_target() -> None:
    from tests.conftest import support_env

    options = config(size=1, allowed_targets=("timeouts",), env=support_env(),
                     cancel_grace=0.1)
    async with snakepit.open_pool(options) as pool:
        # the natural first attempt: a deadline, not a keyword for the target
        assert await pool.call("timeouts.with_timeout", 1, timeout=120) == {
            "value": 1, "timeout": None}
        # a keyword literally named timeout reaches the target through invoke
        assert await pool.invoke("timeouts.with_timeout", [2], {"timeout": 5}) == {
            "value": 2, "timeout": 5}
        async with pool.session() as s:
            assert await s.call("timeouts.with_timeout", 3, timeout=60) == {
                "value": 3, "timeout": None}
        with pytest.raises(snakepit.WorkerTimeout):  # and it is enforced
            await pool.call("timeouts.nap", 30, timeout=0.5)
