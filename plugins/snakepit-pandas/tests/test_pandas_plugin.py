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
    assert all(column["kind"] == "raw" and memoryview(column["bytes"]).nbytes == size
               for column, size in zip(encoded["data"], (8_000_000, 4_000_000), strict=True))
    # views of the frame's own memory: no copy before the codec writes them
    assert all(numpy.shares_memory(numpy.asarray(column["bytes"]), frame[name].to_numpy())
               for column, name in zip(encoded["data"], "xy", strict=True))
    assert encoded["index"] == {"range": [0, 1_000_000, 1], "name": None}
    pandas.testing.assert_frame_equal(DataFrameSerializer().decode(encoded), frame)


async def test_a_large_frame_through_a_pool() -> None:
    frame = pandas.DataFrame({"x": numpy.random.default_rng(1).random(200_000)})
    async with snakepit.open_pool(CONFIG) as pool:
        back = await pool.call("pandas.concat", [frame])
    pandas.testing.assert_frame_equal(back, frame)


async def test_a_frames_columns_reuse_their_segments_from_the_second_trip() -> None:
    # Six columns past the shared-memory threshold: each trip writes them into segments
    # both sides already have mapped. Two things made every trip create fresh segment
    # files (page faults and all) before: a cap of four free segments per side, and the
    # received columns' views kept alive by the wire data after decoding.
    rng = numpy.random.default_rng(5)
    frame = pandas.DataFrame({f"c{i}": rng.random(200_000) for i in range(6)})
    async with snakepit.open_pool(CONFIG, size=1) as pool:
        results = [await pool.call("pandas.DataFrame.copy", frame, deep=False)
                   for _ in range(4)]
        codec = pool.workers()[0].shared_memory
        assert codec is not None and codec.sent == codec.received == 24
        assert codec.pool.created == 6  # the first trip's, used both ways ever since
    for result in results:  # each its own memory, untouched by later trips
        pandas.testing.assert_frame_equal(result, frame)
    results[0].iloc[0, 0] = -1.0  # and writable
    assert results[0].iloc[0, 0] == -1.0 and results[1].iloc[0, 0] == frame.iloc[0, 0]


@pytest.mark.parametrize("codec", ["json"])
async def test_json_pools_say_why_frames_cannot_travel(codec: str) -> None:
    async with snakepit.open_pool(CONFIG, codec=codec, size=1) as pool:
        with pytest.raises(snakepit.PayloadError):
            await pool.call("pandas.concat", [sample()])


# -- the dtypes beyond numpy's ---------------------------------------------------------------
async def round_trip(value: object) -> object:
    """Host -> worker -> host: ``pandas.concat`` of one frame (or series) is itself."""
    async with snakepit.open_pool(CONFIG, size=1) as pool:
        return await pool.call("pandas.concat", [value])


async def test_nullable_dtypes_keep_na_and_their_dtype() -> None:
    frame = pandas.DataFrame({
        "Int64": pandas.array([1, None, 3], dtype="Int64"),
        "UInt8": pandas.array([None, 2, 255], dtype="UInt8"),
        "Float64": pandas.array([0.5, None, 2.5], dtype="Float64"),
        "boolean": pandas.array([True, None, False], dtype="boolean"),
        "string": pandas.array(["a", None, "c"], dtype="string"),
        "str": pandas.Series(["a", None, "c"], dtype="str"),
    })
    back = await round_trip(frame)
    assert isinstance(back, pandas.DataFrame)
    pandas.testing.assert_frame_equal(back, frame)
    assert back["Int64"].dtype == "Int64" and back["Int64"].isna().tolist() == [
        False, True, False]  # NA stays NA: the column is not turned into floats
    assert back["boolean"][1] is pandas.NA and back["string"][1] is pandas.NA


async def test_timezones_periods_intervals_and_categoricals() -> None:
    when = pandas.Series(pandas.date_range("2026-03-28", periods=3, freq="D",
                                           tz="Europe/Paris"))
    when[1] = pandas.NaT
    frame = pandas.DataFrame({
        "when": when,  # across a daylight-saving change
        "month": pandas.period_range("2026-01", periods=3, freq="M"),
        "bucket": pandas.arrays.IntervalArray.from_breaks([0, 1, 5, 10], closed="left"),
        "kind": pandas.Categorical(["x", None, "y"], categories=["y", "x"], ordered=True),
    }, index=pandas.DatetimeIndex(["2026-01-01", "2026-01-02", "2026-01-03"], tz="UTC",
                                  name="at"))
    back = await round_trip(frame)
    pandas.testing.assert_frame_equal(back, frame)
    quarters = pandas.Series([1.5, 2.5], index=pandas.period_range("2026Q1", periods=2,
                                                                   freq="Q"), name="q")
    pandas.testing.assert_series_equal(await round_trip(quarters), quarters)


async def test_multiindexes_and_repeated_column_labels() -> None:
    rows = pandas.MultiIndex.from_product([["a", "b"], [1, 2]], names=["letter", "n"])
    columns = pandas.MultiIndex.from_tuples([("x", "p"), ("x", "q"), ("y", "p")],
                                            names=["top", "sub"])
    frame = pandas.DataFrame(numpy.arange(12).reshape(4, 3), index=rows, columns=columns)
    pandas.testing.assert_frame_equal(await round_trip(frame), frame)
    column = frame[("x", "p")]  # a series named by a tuple
    pandas.testing.assert_series_equal(await round_trip(column), column)
    repeated = pandas.DataFrame([[1, 2.5, "s"]], columns=["a", "a", 7])
    repeated.columns.name = "labels"
    back = await round_trip(repeated)
    pandas.testing.assert_frame_equal(back, repeated)
    assert list(back.columns) == ["a", "a", 7] and back.columns.name == "labels"


async def test_what_cannot_travel_is_a_clear_error_both_ways() -> None:
    sparse = pandas.DataFrame({"sp": pandas.arrays.SparseArray([0.0, 1.0, 0.0])})
    async with snakepit.open_pool(CONFIG, size=1) as pool:
        with pytest.raises(snakepit.PayloadError, match=r"column 'sp' of dtype Sparse"):
            await pool.call("pandas.concat", [sparse])  # host -> worker
        array = await pool.call("pandas.arrays.SparseArray", [0.0, 1.0])
        with pytest.raises(snakepit.RemoteError) as info:  # worker -> host
            await pool.call("pandas.DataFrame", {"sp": array})
        assert info.value.remote_type == "snakepit_pandas.UnsupportedPandasData"
        assert "convert to a numpy, nullable" in info.value.remote_message
        assert info.value.remote_message.startswith(  # the worker names the serializer
            "serializer 'pandas.DataFrame' (snakepit_pandas) failed to encode a DataFrame")


def test_nullable_and_timezone_columns_travel_as_bytes_not_cells() -> None:
    size = 100_000
    frame = pandas.DataFrame({
        "n": pandas.array(numpy.arange(size), dtype="Int64"),
        "t": pandas.date_range("2026-01-01", periods=size, freq="s", tz="UTC"),
        "p": pandas.period_range("2026-01-01", periods=size, freq="D"),
    })
    encoded = DataFrameSerializer().encode(frame)
    masked, zoned, periods = encoded["data"]
    assert masked["kind"] == "masked" and len(masked["data"]["bytes"]) == 8 * size
    assert len(masked["mask"]["bytes"]) == size
    assert zoned["kind"] == "datetimetz" and len(zoned["data"]["bytes"]) == 8 * size
    assert periods["kind"] == "period" and len(periods["data"]["bytes"]) == 8 * size
    pandas.testing.assert_frame_equal(DataFrameSerializer().decode(encoded), frame)


# -- numpy values, with snakepit-pandas alone --------------------------------------------------
async def test_numpy_arrays_and_scalars_travel_with_pandas_alone() -> None:
    frame = pandas.DataFrame({"f": [0.5, 1.5, 2.5], "n": numpy.arange(3, dtype="int64")})
    async with snakepit.open_pool(CONFIG, size=1) as pool:
        floats = await pool.call("pandas.Series.to_numpy", frame["f"])
        assert isinstance(floats, numpy.ndarray) and floats.tolist() == [0.5, 1.5, 2.5]
        total, biggest = await pool.pipeline([
            {"target": "pandas.Series.sum", "args": [frame["n"]]},
            {"target": "pandas.Series.max", "args": [frame["n"]]}])
        assert type(total) is numpy.int64 and total == 3
        assert type(biggest) is numpy.int64 and biggest == 2
        # an ndarray argument (PayloadError "ndarray has no wire form" before)
        series = await pool.call("pandas.Series", numpy.array([3, 1, 2], dtype="uint8"))
        pandas.testing.assert_series_equal(series, pandas.Series([3, 1, 2], dtype="uint8"))


# -- object columns stay object ------------------------------------------------------------------
async def copied(value: pandas.DataFrame | pandas.Series) -> object:
    """Host -> worker -> host through ``.copy()``: an identity even under pandas 3, whose
    ``concat`` itself turns an object index of strings into ``str``."""
    async with snakepit.open_pool(CONFIG, size=1) as pool:
        return await pool.call(f"pandas.{type(value).__name__}.copy", value)


async def test_object_columns_and_indexes_of_strings_stay_object_with_none() -> None:
    frame = pandas.DataFrame({
        "o": pandas.Series(["a", None, "c"], dtype=object),
        "mixed": pandas.Series(["a", 1, None], dtype=object),
        "n": [1, 2, 3],
    })
    frame.index = pandas.Index(["x", None, "z"], dtype=object, name="key")
    back = await copied(frame)
    pandas.testing.assert_frame_equal(back, frame)
    assert back["o"].dtype == object and back["o"].tolist() == ["a", None, "c"]
    assert back.index.dtype == object and back.index.tolist() == ["x", None, "z"]
    series = pandas.Series(["p", None], dtype=object, name="s")
    back_series = await copied(series)
    assert back_series.dtype == object and back_series.tolist() == ["p", None]
    labels = pandas.Categorical(["u", "v"], categories=pandas.Index(["v", "u"], dtype=object))
    back_labels = await copied(pandas.Series(labels))
    assert back_labels.cat.categories.dtype == object


# -- pandas scalars and bare indexes are values -------------------------------------------------
async def test_timestamps_timedeltas_periods_and_indexes_travel_as_values() -> None:
    async with snakepit.open_pool(CONFIG, size=1) as pool:
        when = await pool.call("pandas.Timestamp", "2026-03-29 01:30", tz="Europe/Paris")
        assert when == pandas.Timestamp("2026-03-29 01:30", tz="Europe/Paris")
        assert type(when) is pandas.Timestamp and str(when.tz) == "Europe/Paris"
        span = await pool.call("pandas.Timedelta", "1 day 2h")
        assert type(span) is pandas.Timedelta and span == pandas.Timedelta(hours=26)
        quarter = await pool.call("pandas.Period", "2026Q1")
        assert type(quarter) is pandas.Period and quarter.freqstr == "Q-DEC"
        assert await pool.call("pandas.to_datetime", "NaT") is pandas.NaT
        days = await pool.call("pandas.date_range", "2026-01-01", periods=3, freq="D",
                               tz="UTC", name="day")
        assert isinstance(days, pandas.DatetimeIndex) and days.freqstr == "D"
        pandas.testing.assert_index_equal(days, pandas.date_range(
            "2026-01-01", periods=3, freq="D", tz="UTC", name="day"))
        # and as arguments, host -> worker
        assert await pool.call("pandas.Timestamp.isoformat", when) == (
            "2026-03-29T01:30:00+01:00")
        assert await pool.call("pandas.Index.max", days) == days[-1]


# -- string columns as one text buffer --------------------------------------------------------
def test_string_columns_travel_as_one_text_buffer_and_keep_their_missing() -> None:
    size = 1000
    names = [f"name {i}" if i % 7 else None for i in range(size)]
    frame = pandas.DataFrame({
        "object": pandas.Series(names, dtype=object),
        "string": pandas.Series(names, dtype="string"),  # NA for missing
        "str": pandas.Series(names, dtype="str"),  # NaN for missing
        "nan_object": pandas.Series([numpy.nan if n is None else n for n in names],
                                    dtype=object),
        "odd": pandas.Series(["a\x00b", "\ud800", "é"] * 333 + [""], dtype=object),
    })
    encoded = DataFrameSerializer().encode(frame)
    kinds = [column["kind"] for column in encoded["data"]]
    str_kind = "string" if isinstance(frame["str"].dtype, pandas.StringDtype) else (
        "text")  # pandas 2's "str" is object
    assert kinds == ["text", "string", str_kind, "list", "list"]
    assert "text" in encoded["data"][1] and "text" in encoded["data"][2]
    back = DataFrameSerializer().decode(encoded)
    pandas.testing.assert_frame_equal(back, frame)
    assert back["object"][0] is None and back["string"][0] is pandas.NA
    assert back["nan_object"][0] is not None and numpy.isnan(back["nan_object"][0])
    assert back["object"].dtype == object and back["string"].dtype == "string"
