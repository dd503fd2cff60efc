import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snakepit.errors import PayloadError, ProtocolError
from snakepit.protocol.framing import LARGE_FRAME, FrameDecoder, encode_frame


def test_frame_is_big_endian_length_then_payload() -> None:
    assert encode_frame(b"abc", 100) == b"\x00\x00\x00\x03abc"


def test_encode_refuses_oversized_payload() -> None:
    with pytest.raises(PayloadError, match="exceeds max_frame_size"):
        encode_frame(b"x" * 11, 10)


def test_decoder_refuses_oversized_header_before_buffering_payload() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    with pytest.raises(ProtocolError, match="over max_frame_size"):
        decoder.feed(struct.pack(">I", 1025))
    assert decoder.buffered == 4  # the payload was never awaited


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_any_split_of_the_stream_yields_the_same_frames(payloads: list[bytes],
                                                       cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p, 1024) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder(1024)
    out: list[bytes] = []
    for start, stop in itertools.pairwise(points):
        out.extend(decoder.feed(stream[start:stop]))
    assert out == payloads
    assert decoder.buffered == 0


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 5, LARGE_FRAME - 1, LARGE_FRAME, LARGE_FRAME + 7]),
                   max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=10**7), max_size=12),
    direct=st.booleans(),
)
def test_large_frames_survive_any_split_and_direct_reads(sizes: list[int], cuts: list[int],
                                                         direct: bool) -> None:
    payloads = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    stream = b"".join(encode_frame(p, 1 << 24) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder(1 << 24)
    out: list[bytes] = []
    for start, stop in itertools.pairwise(points):
        piece = memoryview(stream)[start:stop]
        while piece:
            window = decoder.window() if direct else None
            if window is not None:  # as the host's reader does: straight into place
                count = min(len(window), len(piece))
                window[:count] = piece[:count]
                out.extend(bytes(frame) for frame in decoder.filled(count))
            else:
                count = len(piece)
                out.extend(bytes(frame) for frame in decoder.feed(bytes(piece)))
            piece = piece[count:]
    assert out == payloads
    assert decoder.buffered == 0


def test_frames_before_a_bad_header_are_returned_first() -> None:
    """A bad header costs the stream, not the good frames read with it."""
    from snakepit.errors import ProtocolError
    from snakepit.protocol.framing import FrameDecoder, encode_frame

    decoder = FrameDecoder(100)
    good = encode_frame(b"good", 100) + encode_frame(b"also", 100)
    assert decoder.feed(good + (101).to_bytes(4, "big")) == [b"good", b"also"]
    assert isinstance(decoder.failed, ProtocolError)
    with pytest.raises(ProtocolError, match="over max_frame_size"):
        decoder.feed(b"more")
    with pytest.raises(ProtocolError, match="over max_frame_size"):  # nothing good first
        FrameDecoder(100).feed((101).to_bytes(4, "big"))
