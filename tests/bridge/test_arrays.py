"""numpy arrays and scalars travel with snakepit itself (no serializer plugin needed)."""

from __future__ import annotations

import msgpack
import numpy
import pytest

import snakepit
from snakepit.bridge.arrays import BUILTIN_SERIALIZERS, ArraySerializer, owned_array
from snakepit.bridge.plugins import encode_value, load_serializers
from snakepit.plugins import host_serializers
from snakepit.protocol import shm

ENHANCED = "snakepit.bridge.enhanced:EnhancedHandler"
CONFIG = snakepit.PoolConfig(size=1, handler=ENHANCED, allowed_targets=("numpy",))


def through_msgpack(value: object) -> object:
    """Encode with the built-in serializers only, pack, unpack, decode."""
    serializer = ArraySerializer()
    packed = msgpack.packb(encode_value(value, BUILTIN_SERIALIZERS), use_bin_type=True)
    return serializer.decode(msgpack.unpackb(packed, raw=False)["data"])


def test_both_sides_carry_arrays_without_any_plugin() -> None:
    assert "numpy.ndarray" in {s.name for s in load_serializers()}
    assert "numpy.ndarray" in {s.name for s in host_serializers()}
    assert any(s.claims(numpy.int64(1)) for s in BUILTIN_SERIALIZERS)


@pytest.mark.parametrize("value", [
    numpy.arange(12, dtype="int32").reshape(3, 4),
    numpy.arange(12.0).reshape(3, 4).T,                 # Fortran order
    numpy.arange(30)[::3],                              # strided
    numpy.array(["2026-01-01", "NaT"], dtype="datetime64[ns]"),
    numpy.array([1, 2], dtype="timedelta64[s]"),
    numpy.array(["a", "bcd"]), numpy.array([b"x", b"yz"]),
    numpy.array([1 + 2j], dtype="complex64"), numpy.zeros((0, 3), dtype="uint16"),
    numpy.array(["a", None, "c"], dtype=object),
    numpy.array(7.5),
], ids=lambda value: f"{value.dtype}{list(value.shape)}")
def test_arrays_keep_dtype_shape_and_values(value: numpy.ndarray) -> None:
    back = through_msgpack(value)
    assert isinstance(back, numpy.ndarray)
    assert (back.dtype, back.shape) == (value.dtype, value.shape)
    assert back.flags.writeable
    numpy.testing.assert_array_equal(back, value)


@pytest.mark.parametrize("scalar", [numpy.int64(5), numpy.uint8(255), numpy.bool_(True),
                                    numpy.float32(0.25), numpy.datetime64("2026-01-01")])
def test_scalars_stay_numpy_scalars_of_their_dtype(scalar: numpy.generic) -> None:
    back = through_msgpack(scalar)
    assert type(back) is type(scalar) and back == scalar


def test_contiguous_arrays_are_not_copied_and_strided_ones_once() -> None:
    array = numpy.arange(1000, dtype="float64").reshape(10, 100)
    encoded = ArraySerializer().encode(array)
    assert isinstance(encoded["bytes"], memoryview)
    assert numpy.shares_memory(numpy.asarray(encoded["bytes"]), array)
    fortran = numpy.asfortranarray(array)
    assert numpy.shares_memory(numpy.asarray(ArraySerializer().encode(fortran)["bytes"]),
                               fortran)
    strided = array[:, ::2]
    data = ArraySerializer().encode(strided)["bytes"]
    assert not numpy.shares_memory(numpy.asarray(data), array)
    assert data.nbytes == strided.nbytes


def test_a_received_view_is_copied_once_then_released() -> None:
    # what the codec hands over for a shared-memory segment: a read-only view; the
    # array must own writable memory, and the view must let go of the segment at once
    source = bytearray(numpy.arange(6, dtype="<i4").tobytes())
    view = memoryview(source).toreadonly()
    array = owned_array(view, numpy.dtype("<i4"))
    assert array.tolist() == list(range(6)) and array.flags.writeable
    assert not numpy.shares_memory(array, numpy.frombuffer(source, dtype="<i4"))
    with pytest.raises(ValueError, match="released"):
        view.tobytes()
    # in-band bytes: copied (bytes are immutable); a writable buffer is used as it is
    assert owned_array(bytes(source), numpy.dtype("<i4")).flags.writeable
    shared = owned_array(source, numpy.dtype("<i4"))
    assert numpy.shares_memory(shared, numpy.frombuffer(source, dtype="<i4"))


def test_structured_arrays_have_no_wire_form() -> None:
    records = numpy.zeros(2, dtype=[("a", "i4"), ("b", "f8")])
    with pytest.raises(TypeError, match="no wire form"):
        ArraySerializer().encode(records)


async def test_arrays_and_scalars_travel_both_ways_through_a_pool() -> None:
    async with snakepit.open_pool(CONFIG) as pool:
        made = await pool.call("numpy.arange", 6, dtype="int16")
        assert isinstance(made, numpy.ndarray) and made.dtype == numpy.int16
        assert made.tolist() == list(range(6))
        total = await pool.call("numpy.sum", numpy.arange(10)[::2])  # an array argument
        assert type(total) is numpy.int64 and total == 20
        grid = numpy.arange(6.0).reshape(2, 3)
        back = await pool.call("numpy.transpose", grid)  # a Fortran-ordered view
        numpy.testing.assert_array_equal(back, grid.T)


@pytest.mark.skipif(not shm.available(), reason="no writable /dev/shm")
async def test_large_arrays_go_through_shared_memory() -> None:
    big = numpy.random.default_rng(7).random((512, 1024))  # 4 MiB
    async with snakepit.open_pool(CONFIG) as pool:
        doubled = await pool.call("numpy.multiply", big, 2)
        codec = pool.workers()[0].shared_memory
        assert codec is not None and (codec.sent, codec.received) == (1, 1)
    assert doubled.shape == (512, 1024) and doubled.dtype == numpy.float64
    numpy.testing.assert_array_equal(doubled, big * 2)


def test_messages_holding_serialized_values_are_encoded_once() -> None:
    """A serializer's tagged value keeps its buffers deep in the message: the codec goes
    straight to moving them out of band instead of first encoding them all in band."""
    big = numpy.zeros(1 << 18)  # 2 MiB
    tagged = encode_value(big, BUILTIN_SERIALIZERS)
    threshold = 1 << 20
    assert shm._shallow_large({"t": "result", "id": 1, "value": tagged}, threshold)
    call = {"target": "numpy.sum", "args": [tagged], "kwargs": {}}
    assert shm._shallow_large({"t": "call", "id": 2, "args": call}, threshold)
    assert shm._shallow_large({"t": "result", "id": 3, "value": [1, tagged]}, threshold)
    assert not shm._shallow_large({"t": "call", "id": 4, "args": {"n": 5}}, threshold)
    assert not shm._shallow_large({"t": "result", "id": 5, "value": [1, 2, 3]}, threshold)
