"""Length-prefixed framing: a 4-byte big-endian payload length, then the payload.

Standard library only: the bridge uses this module inside worker processes.
"""

from __future__ import annotations

import struct

from snakepit.errors import PayloadError, ProtocolError

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
_MAX_REPRESENTABLE = 2**32 - 1


def encode_frame(payload: bytes, max_frame_size: int) -> bytes:
    """Return ``payload`` with its length header.

    Raises:
        PayloadError: the payload is larger than ``max_frame_size`` (the sender's own
            value is at fault, not the peer).
    """
    size = len(payload)
    if size > max_frame_size or size > _MAX_REPRESENTABLE:
        raise PayloadError(f"frame of {size} bytes exceeds max_frame_size {max_frame_size}")
    return HEADER.pack(size) + payload


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get every complete payload back.

    The length header is checked against ``max_frame_size`` before any of the payload
    is buffered, so a peer cannot make us allocate an oversized buffer.
    """

    __slots__ = ("_buffer", "_max_frame_size", "_start")

    def __init__(self, max_frame_size: int) -> None:
        self._buffer = bytearray()
        self._start = 0
        self._max_frame_size = max_frame_size

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return the payloads of all frames now complete, in order.

        Raises:
            ProtocolError: a header announces a frame larger than ``max_frame_size``.
                The decoder is unusable afterwards; the stream must be dropped.
        """
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        start = self._start
        end = len(buffer)
        while end - start >= HEADER_SIZE:
            (size,) = HEADER.unpack_from(buffer, start)
            if size > self._max_frame_size:
                raise ProtocolError(
                    f"peer announced a frame of {size} bytes, over max_frame_size "
                    f"{self._max_frame_size}"
                )
            stop = start + HEADER_SIZE + size
            if stop > end:
                break
            frames.append(bytes(buffer[start + HEADER_SIZE : stop]))
            start = stop
        if start == end:
            buffer.clear()
            start = 0
        elif start > 65536 and start * 2 > end:
            # Compact rarely: only when the consumed prefix dominates the buffer.
            del buffer[:start]
            start = 0
        self._start = start
        return frames
