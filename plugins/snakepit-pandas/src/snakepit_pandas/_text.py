"""Columns of strings as one UTF-8 buffer, not one wire object per cell.

A million strings sent as a list cost a msgpack object each on both sides, plus a walk
of the list by the shared-memory codec; pickle does better (issue 19: 1.66 s for a
round trip of 1M rows with two string columns, against 1.45 s for pickle's dumps and
loads twice). Joined, they are one buffer -- which large frames send through shared
memory -- and splitting it back is one C call::

    {"text": <UTF-8 of the strings joined by NUL>, "count": n, "missing": <mask bytes> | None}

Only for arrays whose present values are all ``str`` containing no NUL, and whose missing
values are all ``None``; anything else keeps the list form (exact, slower). Lone
surrogates survive (``surrogatepass``).
"""

from __future__ import annotations

from typing import Any

SEPARATOR = "\x00"
_MIN_CELLS = 64  # below this a list is as quick, and simpler to read on the wire


def encode_strings(values: Any) -> dict[str, Any] | None:
    """``values`` (an object ndarray: ``str`` and ``None``) as a text buffer, or None
    when it does not qualify (see the module's docstring)."""
    import numpy
    import pandas

    if len(values) < _MIN_CELLS:
        return None
    infer = pandas.api.types.infer_dtype
    missing = None
    present = values
    if infer(values, skipna=False) != "string":  # not all str: some missing, or others
        if infer(values, skipna=True) != "string":
            return None  # numbers, bytes... among them
        missing = numpy.asarray(pandas.isna(values), dtype=bool)
        if not all(item is None for item in values[missing]):
            return None  # NaN or NA among the missing: only the list keeps which
        present = values[~missing]
    strings = present.tolist()
    if set(map(type, strings)) != {str}:  # str subclasses (numpy.str_) would be lost
        return None
    text = SEPARATOR.join(strings)
    if text.count(SEPARATOR) != max(len(present) - 1, 0):
        return None  # a string holds the separator
    return {"text": text.encode("utf-8", "surrogatepass"), "count": len(values),
            "missing": (memoryview(numpy.ascontiguousarray(missing).view(numpy.uint8))
                        if missing is not None else None)}


def decode_strings(data: dict[str, Any]) -> Any:
    """The object ndarray :func:`encode_strings` described (``None`` where missing)."""
    import numpy

    count = data["count"]
    text = bytes(data["text"]).decode("utf-8", "surrogatepass")
    if data["missing"] is None:
        parts = text.split(SEPARATOR) if count else []
        return numpy.array(parts, dtype=object) if parts else numpy.empty(0, dtype=object)
    missing = numpy.frombuffer(data["missing"], dtype=bool)
    present = int(count - missing.sum())
    parts = text.split(SEPARATOR) if present else []
    values = numpy.empty(count, dtype=object)  # None everywhere
    if parts:
        filled = numpy.empty(present, dtype=object)
        filled[:] = parts
        values[~missing] = filled
    return values
