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


LARGE_FRAME = 1 << 22
"""Payloads at least this long are collected in a buffer of their own size, allocated
once when their header arrives, instead of growing a shared buffer and slicing the
payload out of it (a 64 MiB frame was copied three times over on its way through)."""


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get every complete payload back.

    The length header is checked against ``max_frame_size`` before any of the payload
    is buffered, so a peer cannot make us allocate an oversized buffer. A large payload
    is collected in a buffer of its own size (see :data:`LARGE_FRAME`); a reader that
    reads straight into it (:meth:`window`, :meth:`filled`) saves the last copy too.
    """

    __slots__ = ("_buffer", "_large", "_large_filled", "_max_frame_size", "_start", "failed")

    def __init__(self, max_frame_size: int) -> None:
        self._buffer = bytearray()
        self._start = 0
        self._max_frame_size = max_frame_size
        self._large: bytearray | None = None
        self._large_filled = 0
        self.failed: ProtocolError | None = None
        """Set when a header was bad but complete frames came before it in the same
        feed: those are returned, and this is raised by the next feed. A reader checks
        it once it has acted on them, so that no good frame is lost to a bad one."""

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer) - self._start + self._large_filled

    def window(self) -> memoryview | None:
        """Where the rest of a large payload goes, for a reader that can read into it
        directly (``os.readv``) and then call :meth:`filled`; None between large frames."""
        if self._large is None:
            return None
        return memoryview(self._large)[self._large_filled:]

    def filled(self, count: int) -> list[bytes | bytearray]:
        """``count`` bytes were read into :meth:`window`; returns the payload if done,
        as the very buffer it was read into (codecs take a bytearray as they take
        bytes, and copying it would cost as much again as the transfer)."""
        large = self._large
        assert large is not None
        self._large_filled += count
        if self._large_filled < len(large):
            return []
        self._large, self._large_filled = None, 0
        return [large]

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data`` and return the payloads of all frames now complete, in order.

        ``data`` is not kept: a reader may pass a view of a buffer it reuses.

        Raises:
            ProtocolError: a header announces a frame larger than ``max_frame_size``
                (or did so in an earlier feed: :attr:`failed`). The decoder is unusable
                afterwards; the stream must be dropped.
        """
        if self.failed is not None:
            raise self.failed
        frames: list[bytes] = []
        if self._large is not None:
            large, filled = self._large, self._large_filled
            taken = min(len(data), len(large) - filled)
            large[filled:filled + taken] = data[:taken] if taken < len(data) else data
            frames.extend(bytes(frame) for frame in self.filled(taken))
            if taken == len(data):
                return frames
            data = data[taken:]
        buffer = self._buffer
        buffer += data
        start = self._start
        end = len(buffer)
        while end - start >= HEADER_SIZE:
            (size,) = HEADER.unpack_from(buffer, start)
            if size > self._max_frame_size:
                error = ProtocolError(
                    f"peer announced a frame of {size} bytes, over max_frame_size "
                    f"{self._max_frame_size}"
                )
                if not frames:
                    raise error
                self.failed = error  # deliver the good frames first
                return frames
            stop = start + HEADER_SIZE + size
            if stop > end:
                if size >= LARGE_FRAME:  # collect the rest in a buffer of its own
                    self._large = large = bytearray(size)
                    self._large_filled = have = end - start - HEADER_SIZE
                    large[:have] = memoryview(buffer)[start + HEADER_SIZE:end]
                    start = end
                break
            if size >= LARGE_FRAME:
                with memoryview(buffer) as view:
                    frames.append(view[start + HEADER_SIZE:stop].tobytes())
            else:
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
