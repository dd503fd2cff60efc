"""Faults injected into chosen calls of a user's own handler, through the fixture."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import snakepit
from snakepit.testing import FAULT_KINDS, Fault, Faults
from snakepit.testing.pytest_plugin import snakepit_pool as _plugin_fixture
from tests.conftest import support_env

APP = snakepit.PoolConfig(size=2, handler="app_handler:AppHandler", env=support_env(),
                          cancel_grace=0.2, shutdown_grace=2.0,
                          restart=snakepit.RestartPolicy(backoff_initial=0.01,
                                                         backoff_max=0.05))



def test_the_project_uses_the_plugins_fixture() -> None:
    import tests.conftest

    assert tests.conftest.snakepit_pool is _plugin_fixture


@pytest.mark.parametrize(("kind", "error"), [
    ("crash", snakepit.WorkerCrashed),
    ("hang", snakepit.WorkerTimeout),
    ("garbage", snakepit.ProtocolError),
    ("oversized", snakepit.PayloadError),
])
async def test_the_chosen_call_and_only_it_suffers_the_fault(
        snakepit_pool: Any, kind: str, error: type[Exception]) -> None:
    pool = await snakepit_pool(APP)
    assert await pool.execute("predict", {"x": 1}) == {"label": 2}
    exited = trio.Event()
    handler = snakepit.telemetry.attach("worker.exited", lambda *_: exited.set())
    try:
        snakepit_pool.inject("predict", kind)
        assert await pool.execute("echo", "other commands are spared") == \
            "other commands are spared"
        with pytest.raises(error):
            await pool.execute("predict", {"x": 2}, timeout=2)
        assert snakepit_pool.faults.pending() == []
        if kind != "oversized":  # the worker dies (a hung one after cancel_grace)
            with trio.fail_after(10):
                await exited.wait()
    finally:
        snakepit.telemetry.detach(handler)
    await pool.wait_ready()
    for x in range(4):  # both workers, the replacement among them: all healthy
        assert await pool.execute("predict", {"x": x}, timeout=10) == {"label": 2 * x}
    assert pool.stats().restarts == (0 if kind == "oversized" else 1)
    assert exited.is_set() == (kind != "oversized")


async def test_slow_delays_the_call_and_keeps_its_answer(snakepit_pool: Any) -> None:
    pool = await snakepit_pool(APP)
    snakepit_pool.inject("predict", "slow", seconds=2)
    started = time.monotonic()
    assert await pool.execute("predict", {"x": 3}) == {"label": 6}
    assert time.monotonic() - started >= 2
    started = time.monotonic()
    assert await pool.execute("predict", {"x": 3}) == {"label": 6}
    assert time.monotonic() - started < 1.5  # the next one is not delayed


async def test_each_armed_fault_is_claimed_exactly_once(snakepit_pool: Any) -> None:
    pool = await snakepit_pool(APP, size=3)
    for _ in range(2):
        snakepit_pool.inject("predict", "oversized")
    outcomes: list[str] = []

    async def call(x: int) -> None:
        try:
            await pool.execute("predict", {"x": x})
            outcomes.append("ok")
        except snakepit.PayloadError:
            outcomes.append("fault")

    async with trio.open_nursery() as nursery:
        for x in range(12):
            nursery.start_soon(call, x)
    assert sorted(outcomes) == ["fault"] * 2 + ["ok"] * 10


async def test_streams_and_the_handlers_identity_are_untouched(snakepit_pool: Any) -> None:
    pool = await snakepit_pool(APP, size=1)
    info = await pool.execute("info")
    assert info["handler"] == "app_handler:AppHandler"
    assert {"predict", "numbers"} <= set(info["commands"])
    async with pool.stream("numbers", {"n": 3}) as chunks:
        assert [chunk async for chunk in chunks] == [0, 1, 2]
    snakepit_pool.inject("numbers", "crash")
    with pytest.raises(snakepit.WorkerCrashed):
        async with pool.stream("numbers", {"n": 3}) as chunks:
            [chunk async for chunk in chunks]


def test_faults_are_armed_in_order_and_validated(tmp_path: Path) -> None:
    faults = Faults(tmp_path)
    faults.inject("a", "crash")
    faults.inject("b", "slow", seconds=2)
    faults.inject("a", "hang")
    assert faults.pending() == [Fault("a", "crash"), Fault("b", "slow", 2), Fault("a", "hang")]
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        faults.inject("a", "explode")
    with pytest.raises(ValueError, match="seconds"):
        faults.inject("a", "slow", seconds=-1)
    faults.clear()
    assert faults.pending() == []
    assert set(FAULT_KINDS) == {"crash", "hang", "slow", "garbage", "oversized"}


def test_faults_need_a_python_handler(tmp_path: Path) -> None:
    config = snakepit.PoolConfig(command=("/bin/sh", "-c", "true"))
    with pytest.raises(snakepit.ConfigError, match="faults need a Python handler"):
        Faults(tmp_path).wrap(config)


async def test_several_named_pools_take_faults_too(snakepit_pool: Any) -> None:
    config = snakepit.SnakepitConfig(pools={
        "general": attrs.evolve(APP, name="general", size=1),
        "neural": attrs.evolve(APP, name="neural", size=1),
    })
    pools = await snakepit_pool.open_pools(config)
    assert set(snakepit_pool.pools) == {pools["general"], pools["neural"]}
    snakepit_pool.inject("predict", "oversized")
    outcomes = []
    for name in ("general", "neural"):
        try:
            outcomes.append(await pools[name].execute("predict", {"x": 1}))
        except snakepit.PayloadError:
            outcomes.append("fault")
    assert outcomes == ["fault", {"label": 2}]  # the first call of any pool took it
