"""pandas DataFrame and Series across the snakepit wire.

Loaded by workers (without pluggy) and by the host, through the
``snakepit.serializers`` entry point: keep imports lazy and pandas-free at import time.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["SERIALIZERS", "DataFrameSerializer", "SeriesSerializer"]

_RAW_KINDS = "biufcmM"  # bool, ints, floats, complex, timedelta, datetime: raw bytes


def _pandas() -> Any:
    import pandas

    return pandas


def _is(value: Any, name: str) -> bool:
    pandas = sys.modules.get("pandas")  # not imported here: the value is no pandas object
    return pandas is not None and isinstance(value, getattr(pandas, name))


def encode_array(values: Any) -> dict[str, Any]:
    """A 1-d array: raw bytes for numeric kinds, a list otherwise."""
    import numpy

    pandas = _pandas()
    if isinstance(values.dtype, pandas.CategoricalDtype):
        return {"kind": "category", "codes": encode_array(numpy.asarray(values.codes)),
                "categories": encode_array(numpy.asarray(values.categories)),
                "ordered": bool(values.ordered)}
    array = numpy.asarray(values)
    if array.dtype.kind in _RAW_KINDS:
        return {"kind": "raw", "dtype": array.dtype.str,
                "bytes": numpy.ascontiguousarray(array).tobytes()}
    return {"kind": "list", "dtype": str(values.dtype), "values": array.tolist()}


def decode_array(data: dict[str, Any]) -> Any:
    import numpy

    pandas = _pandas()
    if data["kind"] == "raw":
        return numpy.frombuffer(data["bytes"], dtype=numpy.dtype(data["dtype"])).copy()
    if data["kind"] == "category":
        return pandas.Categorical.from_codes(decode_array(data["codes"]),
                                             categories=decode_array(data["categories"]),
                                             ordered=data["ordered"])
    values = data["values"]
    return pandas.array(values, dtype=data["dtype"]) if data["dtype"] != "object" else (
        numpy.array(values, dtype=object))


def encode_index(index: Any) -> dict[str, Any]:
    pandas = _pandas()
    if isinstance(index, pandas.RangeIndex):
        return {"range": [index.start, index.stop, index.step], "name": index.name}
    return {"values": encode_array(index.array if hasattr(index, "array") else index),
            "name": index.name}


def decode_index(data: dict[str, Any]) -> Any:
    pandas = _pandas()
    if "range" in data:
        return pandas.RangeIndex(*data["range"], name=data["name"])
    return pandas.Index(decode_array(data["values"]), name=data["name"])


class DataFrameSerializer:
    name = "pandas.DataFrame"

    def claims(self, value: Any) -> bool:
        return _is(value, "DataFrame")

    def encode(self, frame: Any) -> dict[str, Any]:
        return {"columns": list(frame.columns), "index": encode_index(frame.index),
                "data": [encode_array(frame[column].array) for column in frame.columns]}

    def decode(self, data: dict[str, Any]) -> Any:
        pandas = _pandas()
        columns = {i: decode_array(column) for i, column in enumerate(data["data"])}
        frame = pandas.DataFrame(columns, index=decode_index(data["index"]))
        frame.columns = data["columns"]
        return frame


class SeriesSerializer:
    name = "pandas.Series"

    def claims(self, value: Any) -> bool:
        return _is(value, "Series")

    def encode(self, series: Any) -> dict[str, Any]:
        return {"name": series.name, "index": encode_index(series.index),
                "values": encode_array(series.array)}

    def decode(self, data: dict[str, Any]) -> Any:
        return _pandas().Series(decode_array(data["values"]), index=decode_index(data["index"]),
                                name=data["name"])


SERIALIZERS = [DataFrameSerializer(), SeriesSerializer()]
