"""Large buffers out of band: shared-memory segments handed over by name.

Standard library only (plus msgpack, which the codec needs anyway): the bridge uses this
module in worker environments.

A ``bytes``, ``bytearray`` or ``memoryview`` of at least ``threshold`` bytes in a
message is written to a file in ``/dev/shm`` (memory, not disk) and replaced on the wire
by a msgpack extension value (type :data:`EXT_CODE`) holding the buffer's size, how it
arrives, and the segment's name. Segments are reused
(:mod:`snakepit.protocol.segments`): the receiver owns a segment once it was handed
over, and writes its own next large buffer into it -- mapped and faulted in already --
so a payload costs a warm copy in (and, for ``bytes``, one copy out), not a fresh
file's page faults. ``bytearray`` and ``memoryview`` buffers arrive as read-only views
of the segment, with no copy out at all (docs/performance.md has the figures).

Segments are plain files rather than :mod:`multiprocessing.shared_memory`, whose
resource tracker (a helper process per interpreter) would claim them; and they are
named ``snakepit-<run id>-<creator pid>-<n>``, so that whoever must clean up can find
them without any bookkeeping crossing the process boundary:

- a side keeps at most a few free segments (the rest are unlinked), and unlinks a
  segment's name as soon as a view owns it;
- the host, when a worker exits, unlinks every segment that worker created
  (``snakepit-<run>-<worker pid>-*``) and every one it created for that worker
  (``snakepit-<run>-<host pid>-<worker pid>-*``), whichever side held it last;
- the run registry's reaper removes every segment of a dead run
  (``snakepit-<dead run id>-*``), should the host itself be killed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
from typing import Any

from snakepit.errors import PayloadError, ProtocolError
from snakepit.protocol import wire
from snakepit.protocol.codecs import Codec, msgpack_pack
from snakepit.protocol.segments import SEGMENT_DIR, Segment, SegmentPool, read_bytes

try:
    import msgpack
except ImportError:  # pragma: no cover - a worker venv without msgpack speaks JSON only
    msgpack = None

__all__ = ["EXT_CODE", "SEGMENT_DIR", "SharedMemoryCodec", "available", "remove_segments",
           "segment_prefix"]

RUN_ID_ENV = "SNAKEPIT_RUN_ID"
"""The run id every worker inherits (the run registry's; named here for the bridge)."""

EXT_CODE = 0x53
"""msgpack extension type of a segment reference (``"S"``)."""

_HEADER = struct.Struct(">QB")
"""A segment reference: the size of the buffer, and how it arrives (:data:`_BYTES`,
:data:`_VIEW`); the segment's name follows."""
_BYTES, _VIEW = 0, 1
_BUFFERS = (bytes, bytearray, memoryview)


def available() -> bool:
    """Whether this machine has a writable ``/dev/shm`` (and we have msgpack)."""
    return msgpack is not None and os.path.isdir(SEGMENT_DIR) and os.access(
        SEGMENT_DIR, os.W_OK | os.X_OK)


def segment_prefix(run_id: str, pid: int, peer: int | None = None) -> str:
    """File-name prefix of the segments process ``pid`` of run ``run_id`` creates (for
    its peer ``peer``: the host names the worker each of its codecs talks to)."""
    return f"snakepit-{run_id}-{pid}-" + (f"{peer}-" if peer is not None else "")


def remove_segments(prefix: str) -> int:
    """Unlink every segment whose name starts with ``prefix``; returns how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(SEGMENT_DIR) as entries:
        for entry in entries:
            if entry.name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _nbytes(value: Any) -> int:
    return value.nbytes if type(value) is memoryview else len(value)


class SharedMemoryCodec(Codec):
    """The msgpack codec, with large buffers moved to shared-memory segments.

    Segments come from a :class:`~snakepit.protocol.segments.SegmentPool`: written
    into while already mapped and faulted in, handed over with the message, kept by the
    receiver for its own next large buffer. A buffer sent as ``bytes`` arrives as
    ``bytes`` (one copy out of the segment, which then goes back to the receiver's
    pool); one sent as a ``bytearray`` or ``memoryview`` (a numpy array's, say) arrives
    as a read-only ``memoryview`` of the segment itself -- no copy at all.

    Args:
        threshold: buffers of at least this many bytes travel out of band.
        prefix: names of the segments this side creates (:func:`segment_prefix`).
        max_size: the largest segment accepted from the peer (``max_frame_size``).
    """

    __slots__ = ("_track", "exported", "max_size", "pool", "received", "sent", "threshold")

    def __init__(self, threshold: int, prefix: str, max_size: int, *,
                 track: bool = True) -> None:
        assert msgpack is not None
        # partials, not methods: no Python frame between the codec and msgpack
        super().__init__("msgpack", msgpack_pack,
                         functools.partial(msgpack.unpackb, raw=False, strict_map_key=False,
                                           ext_hook=self._read_segment),
                         sequence_keys=True)
        self.threshold = threshold
        self.max_size = max_size
        self.pool = SegmentPool(prefix)
        self._track = track
        self.sent = 0
        """Segments written so far (a buffer that went out of band)."""
        self.received = 0
        """Segments read so far."""
        self.exported: dict[int, list[str]] = {}
        """Segments handed over with each message not answered yet, by its id (kept
        when ``track``: the host's, for the record; a worker that dies before reading
        them leaves them to :meth:`release_all`)."""

    @property
    def prefix(self) -> str:
        return self.pool.prefix

    # -- sending ---------------------------------------------------------------------
    def encode(self, message: Any) -> bytes:
        """Encode ``message``, moving its large buffers to segments first.

        Small messages cost one length check more than plain msgpack: only a payload
        that came out at least ``threshold`` long is walked and encoded again.

        A stream's chunks stay in band, whatever their size. They flow one way: a
        segment handed to the receiver never comes back with a large buffer of its
        own, so each chunk would be a new file, created, faulted in and unlinked,
        while the pipe, kept full by a sender that writes as the receiver reads, moves
        them faster (64 KiB chunks: 1.76 GB/s in band against 0.72 GB/s through
        segments on the reference box; 1 MiB chunks: 2.8 against 1.3).
        """
        if not _shallow_large(message, self.threshold):
            payload = super().encode(message)
            if len(payload) < self.threshold or message.get(wire.TAG) == wire.CHUNK:
                return payload
        elif message.get(wire.TAG) == wire.CHUNK:
            return super().encode(message)
        segments: list[Segment] = []
        try:
            try:
                moved = self._export(message, segments)
            except RecursionError as exc:  # packb would have refused it too
                raise PayloadError(f"cannot encode value with msgpack: {exc}") from exc
            payload = super().encode(moved)
        except BaseException:
            for segment in segments:
                self.pool.give_back(segment)
            raise
        for segment in segments:
            self.pool.sent(segment)  # the peer's from now on
        if segments and self._track and type(message.get("id")) is int:
            self.exported.setdefault(message["id"], []).extend(s.name for s in segments)
        return payload

    def _export(self, value: Any, segments: list[Segment]) -> Any:
        kind = type(value)
        if kind in _BUFFERS:
            size = _nbytes(value)
            if size > self.max_size:
                # The peer refuses a segment over its max_frame_size (as it refuses such
                # a frame), so this is the sender's PayloadError, before anything is sent.
                raise PayloadError(f"a buffer of {size} bytes exceeds max_frame_size "
                                   f"{self.max_size}")
            if size >= self.threshold:
                segment = self.pool.write(value)
                if segment is not None:
                    segments.append(segment)
                    self.sent += 1
                    return msgpack.ExtType(EXT_CODE, _HEADER.pack(
                        size, _BYTES if kind is bytes else _VIEW) + segment.name.encode())
            return value
        if kind is dict:
            return {key: self._export(item, segments) for key, item in value.items()}
        if kind is list or kind is tuple:
            return [self._export(item, segments) for item in value]
        return value

    def release(self, message_id: int) -> None:
        """The message ``message_id`` was answered: its segments were read (the peer
        reads a frame's segments as it decodes it) and are the peer's."""
        self.exported.pop(message_id, None)

    def release_all(self) -> None:
        """The peer is gone: unlink every segment this side created for it or holds
        (what the peer created is removed by its own prefix)."""
        self.exported.clear()
        self.pool.close()
        remove_segments(self.pool.prefix)

    # -- receiving -------------------------------------------------------------------
    def _read_segment(self, code: int, data: bytes) -> Any:
        if code != EXT_CODE:
            return msgpack.ExtType(code, data)
        if len(data) < _HEADER.size:
            raise ProtocolError("malformed shared-memory segment reference")
        size, kind = _HEADER.unpack_from(data)
        name = data[_HEADER.size:].decode(errors="replace")
        segment = self.pool.open(name, size, self.max_size)
        self.received += 1
        if kind == _VIEW:
            return self.pool.hand_to_view(segment, size)
        value = read_bytes(segment, size)
        self.pool.give_back(segment)
        return value


def _shallow_large(message: Any, threshold: int) -> bool:
    """Whether a call's arguments or an answer's value is a large buffer, or a map with
    one among its values (the usual places: ``args=blob``, ``{"data": blob}``), or holds
    a serializer's tagged value (an array, a frame, a tensor: ``pool.call``'s arguments
    and results), whose buffers sit deeper; spares encoding such a message twice (a
    57 MiB tensor's bytes were copied twice more). Costs a few lookups for an ordinary
    message."""
    value = message.get("args")
    if value is None:
        value = message.get("value")
    kind = type(value)
    if kind in _BUFFERS:
        return _nbytes(value) >= threshold
    if kind is dict:
        return _TAG in value or any(
            (type(item) in _BUFFERS and _nbytes(item) >= threshold) or _holds_tagged(item)
            for item in value.values())
    return _holds_tagged(value)


_TAG = "__snakepit__"
"""The key of a serializer's tagged value (``snakepit.bridge.hookspecs.TAG_KEY``)."""


def _holds_tagged(value: Any) -> bool:
    """Whether ``value`` is a tagged value or a list (its first 16 items) holding one."""
    kind = type(value)
    if kind is dict:
        return _TAG in value
    if kind is list:
        return any(type(item) is dict and _TAG in item for item in value[:16])
    return False
