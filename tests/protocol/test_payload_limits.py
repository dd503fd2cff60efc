"""Values that cannot travel are refused where they are, and no worker pays for them.

Issue 15, items 2-4: a bytes argument over ``max_frame_size`` went out through shared
memory and the worker, refusing the segment, was killed; a map with a tuple key under
msgpack, and a value nested 10,000 deep under JSON, did the same or let RecursionError
out. Now each is a :class:`PayloadError` on the host before anything is sent, and a
result that cannot travel is an error for its call: the worker stays (same pid, no
restart) and answers the next call.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import snakepit
from snakepit.errors import PayloadError
from snakepit.protocol.codecs import JSON, MAX_DEPTH, MSGPACK
from tests.conftest import chaos_config

MiB = 1 << 20


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def pids(pool: snakepit.Pool) -> list[int]:
    return sorted(worker.pid or 0 for worker in pool.workers())


async def refused_without_harm(pool: snakepit.Pool, *args: Any, times: int = 13,
                               match: str | None = None) -> None:
    """``execute(*args)`` is a PayloadError ``times`` times over (more than a pool of 2
    could absorb in restarts), and the same workers then answer an ordinary call."""
    before = pids(pool)
    with trio.fail_after(60):
        for _ in range(times):
            with pytest.raises(PayloadError, match=match):
                await pool.execute(*args)
        assert await pool.execute("echo", "after") == "after"
    assert pids(pool) == before
    assert pool.stats().restarts == 0


@pytest.mark.parametrize("shm_threshold", [1 << 20, None])
async def test_a_bytes_argument_over_max_frame_size_is_refused_on_the_host(
        shm_threshold: int | None) -> None:
    config = chaos_config(max_frame_size=8 * MiB, shm_threshold=shm_threshold)
    async with snakepit.open_pool(config) as pool:
        await refused_without_harm(pool, "echo", b"x" * (9 * MiB), match="max_frame_size")
        # just under the limit still travels (out of band, with shared memory)
        assert len(await pool.execute("echo", b"y" * (7 * MiB))) == 7 * MiB


@pytest.mark.parametrize("shm_threshold", [1 << 20, None])
async def test_a_result_over_max_frame_size_fails_its_call_only(
        shm_threshold: int | None) -> None:
    config = chaos_config(max_frame_size=8 * MiB, shm_threshold=shm_threshold)
    async with snakepit.open_pool(config) as pool:
        await refused_without_harm(pool, "big", {"size": 9 * MiB}, match="max_frame_size")


async def test_a_tuple_key_under_msgpack_is_refused_on_the_host() -> None:
    async with snakepit.open_pool(chaos_config(codec="msgpack")) as pool:
        await refused_without_harm(pool, "echo", {"points": {(1, 2): "a"}}, match="tuple")


async def test_a_tuple_key_in_a_result_fails_its_call_only() -> None:
    async with snakepit.open_pool(chaos_config(codec="msgpack")) as pool:
        await refused_without_harm(pool, "odd_value", {"kind": "tuple_key"}, match="tuple")


@pytest.mark.parametrize("depth", [10_000, MAX_DEPTH + 1])
async def test_deep_nesting_under_json_is_refused_on_the_host(depth: int) -> None:
    async with snakepit.open_pool(chaos_config(codec="json")) as pool:
        await refused_without_harm(pool, "echo", nested(depth), times=3)
        assert await pool.execute("echo", nested(50)) == nested(50)


@pytest.mark.parametrize("depth", [10_000, MAX_DEPTH + 1])
async def test_deep_nesting_in_a_json_result_fails_its_call_only(depth: int) -> None:
    async with snakepit.open_pool(chaos_config(codec="json")) as pool:
        await refused_without_harm(pool, "odd_value", {"kind": "nested", "depth": depth},
                                   times=3)


def test_the_codecs_refuse_what_the_peer_could_not_decode() -> None:
    assert MSGPACK is not None
    for codec in (JSON, MSGPACK):
        with pytest.raises(PayloadError):
            codec.encode({"t": "call", "args": nested(10_000)})
        with pytest.raises(PayloadError):
            codec.encode({"t": "call", "args": [{"x": {("a", 1): 1}}]})
    with pytest.raises(PayloadError, match="deeper than"):
        JSON.encode({"t": "call", "args": nested(MAX_DEPTH)})
    # what they do accept decodes again
    for value in (nested(MAX_DEPTH - 2), {1: "int key", None: [1.5, b"raw"]}):
        assert MSGPACK.decode(MSGPACK.encode({"args": value}))["args"] == value
