"""pandas DataFrame, Series, Index and scalars across the snakepit wire.

Loaded by workers (without pluggy) and by the host, through the
``snakepit.serializers`` entry point: keep imports lazy and pandas-free at import time.

Every column travels as a whole, never one Python object per cell for numeric data:

- numpy numbers, booleans, datetimes and timedeltas: the raw bytes and the numpy dtype;
- timezone-aware datetimes: the UTC instants' raw bytes and the dtype (unit, zone);
- nullable ``Int*``/``UInt*``/``Float*``/``boolean``: the data's raw bytes plus a
  mask, so ``NA`` stays ``NA`` (it does not turn the column into float);
- periods: their ordinals' raw bytes and the frequency;
- categoricals: codes plus categories; intervals: left and right ends plus ``closed``;
- strings (``str``, ``string``) and object columns of strings: one UTF-8 buffer of the
  strings joined, plus a mask of the missing ones (:mod:`snakepit_pandas._text`); other
  object columns: a list (``None`` for missing); the dtype kept either way: an object
  column (or index) of strings stays ``object`` with its ``None``, under pandas 3 too
  (whose constructors would infer ``str`` and turn ``None`` into NaN);
- indexes (``RangeIndex`` as its range, ``MultiIndex`` as levels plus codes) and the
  columns (any labels, duplicates included, with their names), each as an index.

Anything else (sparse or Arrow-backed columns, say) raises :class:`UnsupportedPandasData`
rather than arriving changed.
"""

from __future__ import annotations

import sys
from typing import Any

from snakepit.bridge.arrays import owned_array
from snakepit_pandas._text import decode_strings, encode_strings

__all__ = ["SERIALIZERS", "DataFrameSerializer", "IndexSerializer", "ScalarSerializer",
           "SeriesSerializer", "UnsupportedPandasData"]

_RAW_KINDS = "biufcmM"  # bool, ints, floats, complex, timedelta, datetime: raw bytes


class UnsupportedPandasData(TypeError):
    """A column (or index) of a kind snakepit-pandas cannot send as it is."""


def _pandas() -> Any:
    import pandas

    return pandas


def _is(value: Any, name: str) -> bool:
    pandas = sys.modules.get("pandas")  # not imported here: the value is no pandas object
    return pandas is not None and isinstance(value, getattr(pandas, name))


def _raw(array: Any) -> dict[str, Any]:
    """An array's data as a buffer: a view of its memory, no copy (a copy only for a
    non-contiguous one), so a large column goes to shared memory straight from it."""
    import numpy

    flat = numpy.ascontiguousarray(array).reshape(-1)
    return {"dtype": array.dtype.str, "bytes": memoryview(flat.view(numpy.uint8))}


def _from_raw(data: dict[str, Any]) -> Any:
    """The array of a :func:`_raw` buffer, in writable memory of its own (one copy out
    of immutable received bytes or a shared-memory view, which is then released; a
    writable buffer is used as it is): :func:`snakepit.bridge.arrays.owned_array`."""
    import numpy

    return owned_array(data["bytes"], numpy.dtype(data["dtype"]))


def _label(value: Any) -> Any:
    """A name or label as wire data (tuples, from MultiIndex columns, stay tuples)."""
    if isinstance(value, tuple):
        return {"tuple": [_label(item) for item in value]}
    item = getattr(value, "item", None)  # a numpy scalar
    return item() if callable(item) and type(value).__module__ == "numpy" else value


def _unlabel(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(_unlabel(item) for item in value["tuple"])
    return value


def _masked_dtypes(pandas: Any) -> tuple[type, ...]:
    """The nullable dtypes: numpy data plus a mask of NA."""
    names = ("Int8Dtype", "Int16Dtype", "Int32Dtype", "Int64Dtype", "UInt8Dtype",
             "UInt16Dtype", "UInt32Dtype", "UInt64Dtype", "Float32Dtype", "Float64Dtype",
             "BooleanDtype")
    return tuple(getattr(pandas, name) for name in names)


def encode_array(values: Any, what: str = "values") -> dict[str, Any]:
    """A 1-d pandas or numpy array as wire data (see the module's docstring).

    Raises:
        UnsupportedPandasData: a dtype this plugin cannot send unchanged.
    """
    import numpy

    pandas = _pandas()
    dtype = values.dtype
    if isinstance(dtype, pandas.CategoricalDtype):
        return {"kind": "category", "codes": encode_array(numpy.asarray(values.codes)),
                "categories": encode_array(values.categories.array, what),
                "ordered": bool(values.ordered)}
    if isinstance(dtype, pandas.DatetimeTZDtype):
        utc = values.tz_convert("UTC").tz_localize(None)
        return {"kind": "datetimetz", "dtype": str(dtype), "data": _raw(numpy.asarray(utc))}
    if isinstance(dtype, pandas.PeriodDtype):
        return {"kind": "period", "dtype": str(dtype),
                "data": _raw(numpy.asarray(values.asi8))}
    if isinstance(dtype, pandas.IntervalDtype):
        return {"kind": "interval", "closed": values.closed,
                "left": encode_array(values.left.array, what),
                "right": encode_array(values.right.array, what)}
    if isinstance(dtype, pandas.StringDtype):
        strings = values.to_numpy(dtype=object, na_value=None)
        text = encode_strings(strings)
        return {"kind": "string", "storage": dtype.storage,
                "na_nan": dtype.na_value is not pandas.NA,
                **({"text": text} if text is not None else {"values": strings.tolist()})}
    if isinstance(dtype, _masked_dtypes(pandas)):
        numpy_dtype = dtype.numpy_dtype
        filler = False if numpy_dtype.kind == "b" else 0
        return {"kind": "masked", "dtype": str(dtype),
                "data": _raw(values.to_numpy(dtype=numpy_dtype, na_value=filler)),
                "mask": _raw(numpy.asarray(values.isna(), dtype=bool))}
    if isinstance(dtype, pandas.api.extensions.ExtensionDtype) and not isinstance(
            values, pandas.arrays.NumpyExtensionArray):
        raise UnsupportedPandasData(
            f"snakepit-pandas cannot send {what} of dtype {dtype} unchanged; convert to a "
            "numpy, nullable, string or categorical dtype first")
    array = numpy.asarray(values)
    if array.dtype.kind in _RAW_KINDS:
        return {"kind": "raw", **_raw(array)}
    if array.dtype.kind != "O":  # fixed-width numpy strings or bytes, void...
        raise UnsupportedPandasData(f"snakepit-pandas cannot send {what} of numpy dtype "
                                    f"{array.dtype}; use object or a pandas string dtype")
    text = encode_strings(array)
    if text is not None:  # an object column of strings (and None): one text buffer
        return {"kind": "text", **text}
    return {"kind": "list", "dtype": "object", "values": array.tolist()}


def _kept(array: Any) -> dict[str, Any]:
    """Constructor arguments that keep ``array``'s dtype: an object array of strings
    would otherwise be inferred as pandas 3's ``str`` dtype, ``None`` turned into NaN."""
    import numpy

    return {"dtype": object} if isinstance(array, numpy.ndarray) and array.dtype == object else {}


def decode_array(data: dict[str, Any]) -> Any:
    import numpy

    pandas = _pandas()
    kind = data["kind"]
    if kind == "raw":
        return _from_raw(data)
    if kind == "category":
        categories = decode_array(data["categories"])
        return pandas.Categorical.from_codes(
            decode_array(data["codes"]), ordered=data["ordered"],
            categories=pandas.Index(categories, **_kept(categories)))
    if kind == "datetimetz":
        dtype = pandas.api.types.pandas_dtype(data["dtype"])
        return pandas.array(_from_raw(data["data"])).tz_localize("UTC").tz_convert(dtype.tz)
    if kind == "period":
        return pandas.arrays.PeriodArray(_from_raw(data["data"]),
                                         dtype=pandas.api.types.pandas_dtype(data["dtype"]))
    if kind == "interval":
        return pandas.arrays.IntervalArray.from_arrays(
            decode_array(data["left"]), decode_array(data["right"]), closed=data["closed"])
    if kind == "string":
        dtype = pandas.StringDtype(storage=data["storage"],
                                   na_value=numpy.nan if data["na_nan"] else pandas.NA)
        values = decode_strings(data["text"]) if "text" in data else data["values"]
        return pandas.array(values, dtype=dtype)
    if kind == "text":
        return decode_strings(data)
    if kind == "masked":
        array = pandas.array(_from_raw(data["data"]), dtype=data["dtype"])
        array[_from_raw(data["mask"])] = pandas.NA
        return array
    values = data["values"]
    return numpy.array(values, dtype=object) if data["dtype"] == "object" else (
        pandas.array(values, dtype=data["dtype"]))  # written by older versions


def encode_index(index: Any, what: str = "index") -> dict[str, Any]:
    import numpy

    pandas = _pandas()
    if isinstance(index, pandas.RangeIndex):
        return {"range": [index.start, index.stop, index.step], "name": _label(index.name)}
    if isinstance(index, pandas.MultiIndex):
        return {"levels": [encode_index(level, what) for level in index.levels],
                "codes": [_raw(numpy.asarray(codes)) for codes in index.codes],
                "names": [_label(name) for name in index.names]}
    return {"values": encode_array(index.array, what), "name": _label(index.name)}


def decode_index(data: dict[str, Any]) -> Any:
    pandas = _pandas()
    if "range" in data:
        return pandas.RangeIndex(*data["range"], name=_unlabel(data["name"]))
    if "levels" in data:
        return pandas.MultiIndex(levels=[decode_index(level) for level in data["levels"]],
                                 codes=[_from_raw(codes) for codes in data["codes"]],
                                 names=[_unlabel(name) for name in data["names"]])
    values = decode_array(data["values"])
    return pandas.Index(values, name=_unlabel(data["name"]), **_kept(values))


class DataFrameSerializer:
    name = "pandas.DataFrame"

    def claims(self, value: Any) -> bool:
        return _is(value, "DataFrame")

    def encode(self, frame: Any) -> dict[str, Any]:
        # by position: column labels may repeat, and need not be strings
        return {"columns": encode_index(frame.columns, "column labels"),
                "index": encode_index(frame.index),
                "data": [encode_array(frame.iloc[:, i].array, f"column {label!r}")
                         for i, label in enumerate(frame.columns)]}

    def decode(self, data: dict[str, Any]) -> Any:
        pandas = _pandas()
        index = decode_index(data["index"])
        if not data["data"]:
            frame = pandas.DataFrame(index=index)
        else:
            columns = {}
            for i, column in enumerate(data["data"]):
                values = decode_array(column)
                # a Series, not the array: the frame would infer str for an object column
                columns[i] = pandas.Series(values, copy=False, **_kept(values))
            frame = pandas.DataFrame(columns, copy=False)
            frame.index = index  # set, not passed: aligning on labels would lose rows
        labels = data["columns"]
        # version 1 wrote a plain list of names
        frame.columns = decode_index(labels) if isinstance(labels, dict) else labels
        return frame


class SeriesSerializer:
    name = "pandas.Series"

    def claims(self, value: Any) -> bool:
        return _is(value, "Series")

    def encode(self, series: Any) -> dict[str, Any]:
        return {"name": _label(series.name), "index": encode_index(series.index),
                "values": encode_array(series.array, f"series {series.name!r}")}

    def decode(self, data: dict[str, Any]) -> Any:
        values = decode_array(data["values"])
        return _pandas().Series(values, index=decode_index(data["index"]),
                                name=_unlabel(data["name"]), **_kept(values))


class IndexSerializer:
    """A bare index (``DatetimeIndex``, ``RangeIndex``, ``MultiIndex``...), as the index
    of a frame travels; a ``DatetimeIndex``'s or ``TimedeltaIndex``'s ``freq`` kept."""

    name = "pandas.Index"

    def claims(self, value: Any) -> bool:
        return _is(value, "Index")

    def encode(self, index: Any) -> dict[str, Any]:
        freq = getattr(index, "freqstr", None) if not _is(index, "PeriodIndex") else None
        return {"index": encode_index(index), "freq": freq}

    def decode(self, data: dict[str, Any]) -> Any:
        index = decode_index(data["index"])
        if data.get("freq"):
            index = type(index)(index, freq=data["freq"])
        return index


#: pandas scalars, each sent as a one-element array of its kind (unit, zone, frequency
#: kept) and taken back out of it.
_SCALARS = (("Timestamp", "DatetimeIndex"), ("Timedelta", "TimedeltaIndex"),
            ("Period", "PeriodIndex"), ("Interval", "IntervalIndex"))


class ScalarSerializer:
    """``Timestamp``, ``Timedelta``, ``Period``, ``Interval``, ``NaT`` and ``NA``."""

    name = "pandas.scalar"

    def claims(self, value: Any) -> bool:
        pandas = sys.modules.get("pandas")
        if pandas is None:
            return False
        return value is pandas.NaT or value is pandas.NA or any(
            isinstance(value, getattr(pandas, scalar)) for scalar, _ in _SCALARS)

    def encode(self, value: Any) -> dict[str, Any]:
        pandas = _pandas()
        if value is pandas.NaT or value is pandas.NA:
            return {"kind": "NaT" if value is pandas.NaT else "NA"}
        for scalar, index in _SCALARS:
            if isinstance(value, getattr(pandas, scalar)):
                return {"kind": scalar,
                        "values": encode_array(getattr(pandas, index)([value]).array)}
        raise UnsupportedPandasData(f"no wire form for pandas scalar {value!r}")

    def decode(self, data: dict[str, Any]) -> Any:
        pandas = _pandas()
        kind = data["kind"]
        if kind in ("NaT", "NA"):
            return getattr(pandas, kind)
        return pandas.Index(decode_array(data["values"]))[0]


SERIALIZERS = [DataFrameSerializer(), SeriesSerializer(), IndexSerializer(),
               ScalarSerializer()]
