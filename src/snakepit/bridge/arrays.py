"""NumPy arrays and scalars across the wire, built in: wherever numpy is importable.

Worker side, standard library only at import time: numpy is looked up in
``sys.modules`` when a value is offered (a value cannot be a numpy array unless numpy
is already imported) and imported only to decode. So a worker without numpy loads this
module for nothing, and an ndarray travels with snakepit alone, no plugin needed -- the
pandas and transformers plugins build on it.

Wire form (tag ``numpy.ndarray``, the name the transformers plugin used before, so
either side of a mixed install still understands the other)::

    {"scalar": bool, "dtype": "<f8", "shape": [2, 3], "order": "C" | "F",
     "bytes": <the raw data>}

- numbers, booleans, datetimes, timedeltas and fixed-width strings/bytes
  (kinds ``biufcmMUS``) travel as their raw bytes: a C- or Fortran-contiguous array is
  handed to the codec as a ``memoryview`` of its own memory (no copy; a large one goes
  through shared memory, written straight from the array), any other layout (a slice
  with a step, a transposed view of a view) is copied once into C order;
- object arrays travel element by element (``{"objects": [...]}``: strings, numbers,
  ``None``, bytes, nested arrays and containers of them keep their types); an element
  with no wire form makes the whole value a ref;
- structured (record) dtypes have no wire form here: the value stays a ref.

The decoded array owns writable memory (one copy out of the received buffer: immutable
``bytes``, or a read-only view of a shared-memory segment, which :func:`owned_array`
releases once copied).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["BUILTIN_SERIALIZERS", "ArraySerializer", "owned_array"]

_RAW_KINDS = "biufcmMUS"


def owned_array(raw: Any, dtype: Any) -> Any:
    """A 1-d array of ``raw``'s contents as ``dtype``, writable and in memory of its own.

    ``raw`` is a buffer as the codec decoded it: ``bytes`` (in band), a read-only
    ``memoryview`` of a shared-memory segment (out of band: copied once, then the view is
    released, so that the segment goes back to its pool at once -- the wire data that
    held it may live on a while, in a finished task's last outcome say, and a segment
    still lent when the next large buffer is sent means a fresh one, page faults and
    all), or a writable buffer, used as it is (no copy). Serializers of array data
    (snakepit-pandas' columns, snakepit-transformers' tensors) decode through this.
    """
    import numpy

    found = numpy.frombuffer(raw, dtype=dtype)
    if found.flags.writeable:
        return found
    owned = found.copy()
    del found  # the view's export, which release() would refuse while it lives
    if type(raw) is memoryview:
        raw.release()
    return owned


class UnsupportedArray(TypeError):
    """An array whose dtype this serializer cannot carry unchanged (structured records)."""


class ArraySerializer:
    """``numpy.ndarray`` and numpy scalars (``numpy.int64(3)``, ``numpy.bool_(True)``)."""

    name = "numpy.ndarray"

    def claims(self, value: Any) -> bool:
        numpy = sys.modules.get("numpy")
        return numpy is not None and isinstance(value, numpy.ndarray | numpy.generic)

    def encode(self, value: Any) -> dict[str, Any]:
        """The wire form above.

        Raises:
            Unencodable: an object array holds an element with no wire form, or the
                dtype is structured; the enhanced bridge then keeps the value as a ref.
        """
        import numpy

        from snakepit.bridge.values import Unencodable, encode_value

        scalar = isinstance(value, numpy.generic)
        array = numpy.asarray(value)
        kind = array.dtype.kind
        if kind == "O":
            items = [encode_value(item, BUILTIN_SERIALIZERS)
                     for item in array.ravel(order="C").tolist()]
            return {"scalar": scalar, "shape": list(array.shape), "objects": items}
        if kind not in _RAW_KINDS or array.dtype.fields is not None:
            raise Unencodable(f"numpy dtype {array.dtype} has no wire form")
        order = "C"
        if array.flags.c_contiguous:
            flat = array
        elif array.flags.f_contiguous:
            flat, order = array.T, "F"  # the transpose of a Fortran array is C-ordered
        else:
            flat = numpy.ascontiguousarray(array)  # the one copy a strided view costs
        data: memoryview | bytes = b""
        if flat.size:
            data = memoryview(flat.reshape(-1).view(numpy.uint8).data)
        return {"scalar": scalar, "dtype": array.dtype.str, "shape": list(array.shape),
                "order": order, "bytes": data}

    def decode(self, data: dict[str, Any]) -> Any:
        import numpy

        shape = tuple(data["shape"])
        if "objects" in data:
            from snakepit.bridge.values import decode_value

            items = [decode_value(item, BUILTIN_SERIALIZERS) for item in data["objects"]]
            array = numpy.empty(len(items), dtype=object)
            if any(isinstance(item, list | tuple | numpy.ndarray) for item in items):
                for i, item in enumerate(items):  # one by one: numpy would broadcast them
                    array[i] = item
            else:
                array[:] = items
            array = array.reshape(shape)
        elif "list" in data:  # written by snakepit-transformers 0.1 for non-numeric arrays
            array = numpy.array(data["list"])
        else:
            dtype = numpy.dtype(data["dtype"])
            raw = data["bytes"]
            array = owned_array(raw, dtype) if len(raw) else numpy.empty(0, dtype=dtype)
            if data.get("order", "C") == "F":
                array = array.reshape(shape[::-1]).T
            else:
                array = array.reshape(shape)
        return array[()] if data["scalar"] else array


BUILTIN_SERIALIZERS: list[Any] = [ArraySerializer()]
"""Serializers snakepit carries itself, after every plugin's (a plugin may claim a
value first)."""
