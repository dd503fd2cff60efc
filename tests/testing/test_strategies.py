"""The hypothesis strategies: what wire_values draws travels every codec unchanged --
through the codecs alone and through real workers -- and fault schedules are valid."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snakepit
from snakepit.bridge.hookspecs import REF_KEY, TAG_KEY
from snakepit.protocol.codecs import CODEC_NAMES
from snakepit.testing import FAULT_KINDS, Fault, Faults, ThreadedPool
from snakepit.testing.strategies import fault_schedules, faults, roundtrip, wire_values


def same(a: Any, b: Any) -> bool:
    """Equal *and* of the same types all the way down (``1 == 1.0 == True`` is not
    "unchanged")."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def walk(value: Any) -> Iterator[Any]:
    """``value`` and everything nested in it (map keys too)."""
    yield value
    if isinstance(value, list | tuple):
        for item in value:
            yield from walk(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from walk(item)


@pytest.mark.parametrize("codec", CODEC_NAMES)
@settings(max_examples=300)
@given(data=st.data())
def test_wire_values_survive_the_codec_unchanged(codec: str, data: st.DataObject) -> None:
    value = data.draw(wire_values(codec))
    assert same(roundtrip(value, codec), value)


@pytest.fixture(scope="module", params=CODEC_NAMES)
def echo_pool(request: pytest.FixtureRequest) -> Any:
    with ThreadedPool(size=1, codec=request.param, shm_threshold=None) as pool:
        yield pool


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_wire_values_survive_a_real_worker_unchanged(echo_pool: ThreadedPool,
                                                     data: st.DataObject) -> None:
    value = data.draw(wire_values(echo_pool.config.codec))
    assert same(echo_pool.execute("echo", value, timeout=30), value)


def test_the_strategies_exclude_what_the_wire_changes() -> None:
    # what json cannot carry unchanged, msgpack can: the strategies know the difference
    assert same(roundtrip({1: b"x"}, "msgpack"), {1: b"x"})
    assert not same(roundtrip({1: "x"}, "json"), {1: "x"})  # keys become strings
    assert not same(roundtrip((1, 2), "msgpack"), (1, 2))  # tuples become lists

    @settings(max_examples=300)
    @given(wire_values("json"))
    def never_bytes_or_markers(value: Any) -> None:
        for part in walk(value):
            assert not isinstance(part, bytes | tuple)
            assert not (isinstance(part, dict) and ({TAG_KEY, REF_KEY} & part.keys()))

    never_bytes_or_markers()
    with pytest.raises(ValueError, match="unknown codec"):
        wire_values("yaml")
    with pytest.raises(ValueError, match="serializers"):
        wire_values("msgpack", objects=[st.just(object())])


@settings(max_examples=200)
@given(fault_schedules(["predict", "fit"], calls=10, max_faults=3, max_seconds=0.5))
def test_fault_schedules_are_valid(schedule: dict[int, Fault]) -> None:
    assert len(schedule) <= 3
    for call, fault in schedule.items():
        assert 0 <= call < 10
        assert fault.command in ("predict", "fit") and fault.kind in FAULT_KINDS
        assert 0 <= fault.seconds <= 0.5


@settings(max_examples=30)
@given(st.lists(faults(["a", "b"], ["crash", "slow"]), max_size=5))
def test_faults_arm_in_the_drawn_order(tmp_path_factory: pytest.TempPathFactory,
                                       drawn: list[Fault]) -> None:
    armed = Faults(tmp_path_factory.mktemp("faults"))
    for fault in drawn:
        armed.inject(fault.command, fault.kind, seconds=fault.seconds)
    assert armed.pending() == drawn


def test_a_threaded_pool_reports_a_failed_start(tmp_path: Path) -> None:
    with pytest.raises(snakepit.WorkerStartupError):
        with ThreadedPool(size=1, handler="no_such_module:Handler"):
            pytest.fail("the pool must not open")
