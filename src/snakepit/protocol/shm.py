"""Large buffers out of band: shared-memory segments handed over by name.

Standard library only (plus msgpack, which the codec needs anyway): the bridge uses this
module in worker environments.

A ``bytes``, ``bytearray`` or ``memoryview`` of at least ``threshold`` bytes in a
message is written to a file in ``/dev/shm`` (memory, not disk) and replaced on the wire
by a msgpack extension value (type :data:`EXT_CODE`) holding the segment's name and
size. The receiver reads the segment into a ``bytes`` and unlinks it at once. So a
64 MiB argument costs two memory copies instead of a trip through a pipe in 1 MiB
pieces plus the framing copies on both sides (docs/performance.md has the figures).

Segments are plain files rather than :mod:`multiprocessing.shared_memory`, whose
resource tracker (a helper process per interpreter) would claim them; and they are
named ``snakepit-<run id>-<creator pid>-<n>``, so that whoever must clean up can find
them without any bookkeeping crossing the process boundary:

- the receiver unlinks a segment as soon as it has read it;
- the host unlinks the segments of a call's arguments when the call is answered or its
  worker dies (a worker may die before reading them), and every segment a worker
  created (``snakepit-<run>-<worker pid>-*``) when that worker exits;
- the run registry's reaper removes every segment of a dead run
  (``snakepit-<dead run id>-*``), should the host itself be killed.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import struct
from typing import Any

from snakepit.errors import PayloadError, ProtocolError
from snakepit.protocol.codecs import Codec

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

SEGMENT_DIR = "/dev/shm"
_SIZE = struct.Struct(">Q")
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

    Args:
        threshold: buffers of at least this many bytes travel out of band.
        prefix: names of the segments this side creates (:func:`segment_prefix`).
        max_size: the largest segment accepted from the peer (``max_frame_size``).
    """

    __slots__ = ("_counter", "_track", "exported", "max_size", "prefix", "received", "sent",
                 "threshold")

    def __init__(self, threshold: int, prefix: str, max_size: int, *,
                 track: bool = True) -> None:
        assert msgpack is not None
        # partials, not methods: no Python frame between the codec and msgpack
        super().__init__("msgpack", functools.partial(msgpack.packb, use_bin_type=True),
                         functools.partial(msgpack.unpackb, raw=False, strict_map_key=False,
                                           ext_hook=self._read_segment),
                         sequence_keys=True)
        self.threshold = threshold
        self.prefix = prefix
        self.max_size = max_size
        self._counter = itertools.count()
        self._track = track
        self.sent = 0
        """Segments written so far (a buffer that went out of band)."""
        self.received = 0
        """Segments read so far."""
        self.exported: dict[int, list[str]] = {}
        """Segments this side created, by the id of the message that carried them
        (kept when ``track``: the host's, whose worker may die before reading them)."""

    # -- sending ---------------------------------------------------------------------
    def encode(self, message: Any) -> bytes:
        """Encode ``message``, moving its large buffers to segments first.

        Small messages cost one length check more than plain msgpack: only a payload
        that came out at least ``threshold`` long is walked and encoded again.
        """
        if not _shallow_large(message, self.threshold):
            payload = super().encode(message)
            if len(payload) < self.threshold:
                return payload
        names: list[str] = []
        try:
            try:
                moved = self._export(message, names)
            except RecursionError as exc:  # packb would have refused it too
                raise PayloadError(f"cannot encode value with msgpack: {exc}") from exc
            payload = super().encode(moved)
        except BaseException:
            for name in names:
                _unlink(name)
            raise
        if names and self._track and type(message.get("id")) is int:
            self.exported.setdefault(message["id"], []).extend(names)
        return payload

    def _export(self, value: Any, names: list[str]) -> Any:
        kind = type(value)
        if kind in _BUFFERS:
            size = _nbytes(value)
            if size > self.max_size:
                # The peer refuses a segment over its max_frame_size (as it refuses such
                # a frame), so this is the sender's PayloadError, before anything is sent.
                raise PayloadError(f"a buffer of {size} bytes exceeds max_frame_size "
                                   f"{self.max_size}")
            if size >= self.threshold:
                name = self._write_segment(value)
                if name is not None:
                    names.append(name)
                    self.sent += 1
                    return msgpack.ExtType(EXT_CODE, _SIZE.pack(_nbytes(value)) + name.encode())
            return value
        if kind is dict:
            return {key: self._export(item, names) for key, item in value.items()}
        if kind is list or kind is tuple:
            return [self._export(item, names) for item in value]
        return value

    def _write_segment(self, value: bytes | bytearray | memoryview) -> str | None:
        """Write ``value`` to a new segment; None (send it in band) if that fails."""
        name = f"{self.prefix}{next(self._counter)}"
        path = os.path.join(SEGMENT_DIR, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError:
            return None
        try:
            view = memoryview(value).cast("B")
            while view:
                view = view[os.write(fd, view):]
        except (OSError, TypeError, ValueError):  # ENOSPC, a non-contiguous view...
            _unlink(name)
            return None
        finally:
            os.close(fd)
        return name

    def release(self, message_id: int) -> None:
        """The message ``message_id`` was answered: unlink what was left of its segments
        (the receiver unlinks each one it has read; this covers one it never read)."""
        for name in self.exported.pop(message_id, ()):
            _unlink(name)

    def release_all(self) -> None:
        """Unlink every segment this side still owns (its peer is gone)."""
        for message_id in list(self.exported):
            self.release(message_id)

    # -- receiving -------------------------------------------------------------------
    def _read_segment(self, code: int, data: bytes) -> Any:
        if code != EXT_CODE:
            return msgpack.ExtType(code, data)
        (size,) = _SIZE.unpack_from(data)
        name = data[_SIZE.size:].decode()
        if "/" in name or not name.startswith("snakepit-"):
            raise ProtocolError(f"bad shared-memory segment name {name!r}")
        if size > self.max_size:
            _unlink(name)
            raise ProtocolError(f"shared-memory segment of {size} bytes exceeds "
                                f"max_frame_size {self.max_size}")
        path = os.path.join(SEGMENT_DIR, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise ProtocolError(f"cannot open shared-memory segment {name}: {exc}") from exc
        try:
            if os.fstat(fd).st_uid != os.getuid():
                raise ProtocolError(f"shared-memory segment {name} belongs to another user")
            _unlink(name)  # ours now; nobody else needs the name
            chunks = []
            left = size
            while left:
                chunk = os.read(fd, left)
                if not chunk:
                    raise ProtocolError(f"shared-memory segment {name} is shorter than "
                                        f"the {size} bytes announced")
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        self.received += 1
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


def _unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(SEGMENT_DIR, name))
