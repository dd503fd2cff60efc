"""snakepit-pandas through real pools: found by its entry point, frames round-trip."""

import numpy
import pandas
import pytest

import snakepit
from snakepit.plugins import host_serializers, installed_plugins
from snakepit_pandas import DataFrameSerializer

CONFIG = snakepit.PoolConfig(size=2, handler="snakepit.bridge.enhanced:EnhancedHandler",
                             allowed_targets=("pandas",))


def sample() -> pandas.DataFrame:
    return pandas.DataFrame({
        "ints": numpy.arange(5, dtype="int64"),
        "small": numpy.arange(5, dtype="int8"),
        "floats": [0.5, 1.5, numpy.nan, 3.5, 4.5],
        "flags": [True, False, True, True, False],
        "names": ["a", "b", None, "d", "e"],
        "when": pandas.date_range("2026-01-01", periods=5, freq="D"),
        "kind": pandas.Categorical(["x", "y", "x", "z", "y"]),
    }, index=pandas.Index([10, 20, 30, 40, 50], name="key"))


def test_found_through_its_entry_point() -> None:
    assert any(p.distribution == "snakepit-pandas" and p.group == "snakepit.serializers"
               and p.error is None for p in installed_plugins())
    assert {s.name for s in host_serializers()} >= {"pandas.DataFrame", "pandas.Series"}


async def test_a_frame_made_in_a_worker_arrives_as_a_frame() -> None:
    async with snakepit.open_pool(CONFIG) as pool:
        frame = await pool.call("pandas.DataFrame", {"a": [1, 2, 3], "b": ["x", "y", "z"]})
        assert isinstance(frame, pandas.DataFrame)
        pandas.testing.assert_frame_equal(
            frame, pandas.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}))


async def test_dtypes_index_and_columns_survive_both_ways() -> None:
    original = sample()
    async with snakepit.open_pool(CONFIG) as pool:
        # host -> worker -> host: concat of one frame is the frame itself
        echoed = await pool.call("pandas.concat", [original])
        pandas.testing.assert_frame_equal(echoed, original)
        series = await pool.call("pandas.Series", [1.0, 2.0], index=["p", "q"], name="s")
        pandas.testing.assert_series_equal(series, pandas.Series([1.0, 2.0], index=["p", "q"],
                                                                 name="s"))


def test_large_numeric_frames_travel_as_bytes_not_cells() -> None:
    frame = pandas.DataFrame({"x": numpy.arange(1_000_000, dtype="float64"),
                              "y": numpy.arange(1_000_000, dtype="int32")})
    encoded = DataFrameSerializer().encode(frame)
    assert all(column["kind"] == "raw" and isinstance(column["bytes"], bytes)
               for column in encoded["data"])
    assert encoded["index"] == {"range": [0, 1_000_000, 1], "name": None}
    pandas.testing.assert_frame_equal(DataFrameSerializer().decode(encoded), frame)


async def test_a_large_frame_through_a_pool() -> None:
    frame = pandas.DataFrame({"x": numpy.random.default_rng(1).random(200_000)})
    async with snakepit.open_pool(CONFIG) as pool:
        back = await pool.call("pandas.concat", [frame])
    pandas.testing.assert_frame_equal(back, frame)


@pytest.mark.parametrize("codec", ["json"])
async def test_json_pools_say_why_frames_cannot_travel(codec: str) -> None:
    async with snakepit.open_pool(CONFIG, codec=codec, size=1) as pool:
        with pytest.raises(snakepit.PayloadError):
            await pool.call("pandas.concat", [sample()])
