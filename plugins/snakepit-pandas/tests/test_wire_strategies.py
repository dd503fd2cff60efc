"""snakepit.testing.strategies with a serializer plugin: plain data with pandas frames
mixed in travels unchanged -- through the codecs, and through a real worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.pandas import column, data_frames, range_indexes

import snakepit
from snakepit.testing import ThreadedPool
from snakepit.testing.strategies import roundtrip, wire_values
from snakepit_pandas import SERIALIZERS

# numeric columns: an object column of strings comes back as pandas 3's str dtype
# (found by this strategy; reported, not yet fixed in snakepit-pandas)
FRAMES = data_frames([column("n", dtype="int64"), column("x", dtype="float64"),
                      column("b", dtype="bool")],
                     index=range_indexes(max_size=4))


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down; frames by value, dtypes and index."""
    if type(a) is not type(b):
        return False
    if isinstance(a, pandas.DataFrame):
        try:
            pandas.testing.assert_frame_equal(a, b)
        except AssertionError:
            return False
        return True
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def values(codec: str) -> st.SearchStrategy[Any]:
    return wire_values(codec, SERIALIZERS, objects=[FRAMES], max_leaves=8)


def frames_in(value: Any) -> Iterator[pandas.DataFrame]:
    if isinstance(value, pandas.DataFrame):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from frames_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from frames_in(item)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_frames_mixed_into_wire_values_survive_the_codec(codec: str,
                                                         data: st.DataObject) -> None:
    if codec == "json":  # frames carry their columns as bytes: msgpack only
        with pytest.raises(snakepit.PayloadError, match="json"):
            roundtrip(data.draw(FRAMES), codec, SERIALIZERS)
        return
    value = data.draw(values(codec))
    assert same(roundtrip(value, codec, SERIALIZERS), value)


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadedPool]:
    with ThreadedPool(size=1, handler="snakepit.bridge.enhanced:EnhancedHandler",
                      allowed_targets=("copy",), shm_threshold=None) as pool:
        yield pool


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_frames_mixed_into_wire_values_survive_a_real_worker(pool: ThreadedPool,
                                                             data: st.DataObject) -> None:
    value = data.draw(values("msgpack"))
    back = pool.run(lambda: pool.pool.call("copy.deepcopy", value))
    assert same(back, value)


def test_the_strategy_does_mix_frames_in() -> None:
    seen: list[int] = []

    @settings(max_examples=100)
    @given(values("msgpack"))
    def count(value: Any) -> None:
        seen.append(len(list(frames_in(value))))

    count()
    assert any(seen)
