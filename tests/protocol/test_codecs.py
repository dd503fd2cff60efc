"""The msgpack codec's packer: one per thread, kept between small frames only."""

from __future__ import annotations

import threading

import msgpack
import pytest

from snakepit.protocol import codecs


def test_packing_matches_packb_and_keeps_a_packer_between_small_frames() -> None:
    value = {"t": "call", "id": 7, "cmd": "echo", "args": [1, 2.5, b"\x00", "é", None]}
    assert codecs.msgpack_pack(value) == msgpack.packb(value, use_bin_type=True)
    packer = codecs._packers.packer
    codecs.msgpack_pack(value)
    assert codecs._packers.packer is packer  # reused: no Packer built per frame


def test_a_large_frame_lets_its_packer_go() -> None:
    # a Packer keeps its buffer as large as the largest frame it built
    codecs.msgpack_pack({"small": 1})
    big = b"x" * (codecs._PACKER_KEEPS + 1)
    assert msgpack.unpackb(codecs.msgpack_pack({"big": big})) == {"big": big}
    assert not hasattr(codecs._packers, "packer")
    assert codecs.msgpack_pack({"small": 1}) == msgpack.packb({"small": 1})


def test_an_unpackable_value_raises_and_the_next_frame_is_whole() -> None:
    with pytest.raises(TypeError):
        codecs.msgpack_pack({"bad": object()})
    assert msgpack.unpackb(codecs.msgpack_pack({"good": [1, 2]})) == {"good": [1, 2]}


def test_threads_pack_side_by_side_with_their_own_packers() -> None:
    barrier = threading.Barrier(4)
    results: dict[int, list[bytes]] = {}

    def pack_many(n: int) -> None:
        barrier.wait()
        results[n] = [codecs.msgpack_pack({"n": n, "i": i, "pad": "x" * (i % 97)})
                      for i in range(2000)]

    threads = [threading.Thread(target=pack_many, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n, frames in results.items():
        assert [msgpack.unpackb(frame) for frame in frames] == [
            {"n": n, "i": i, "pad": "x" * (i % 97)} for i in range(2000)]
