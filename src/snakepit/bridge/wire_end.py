"""The bridge's end of the wire: reading and writing frames, the handshake, the
heartbeat, and answers that always go out (standard library + optional msgpack).

:class:`WireEnd` holds the state of one worker's wire; :class:`~snakepit.bridge.server.
BridgeServer` builds the routing of frames and the running of calls on it.
"""

from __future__ import annotations

import collections
import fcntl
import math
import os
import queue
import select
import sys
import termios
import threading
import time
from typing import Any

from snakepit.bridge.answers import describe_exception, sendable_description
from snakepit.bridge.context import CallContext
from snakepit.bridge.handler import CommandHandler
from snakepit.errors import PayloadError, ProtocolError
from snakepit.protocol import shm, wire
from snakepit.protocol.codecs import JSON, Codec, available_codecs, get_codec
from snakepit.protocol.framing import FrameDecoder, encode_frame
from snakepit.protocol.segments import keep_freed_memory

_READ_SIZE = 1 << 20


class HostGone(BaseException):
    """The wire is closed: the host exited or closed the pipe. Exit quietly."""


def _is_number(value: Any) -> bool:
    """An int or float (not a bool), and not NaN."""
    return type(value) in (int, float) and value == value


class WireEnd:
    """One worker's end of the wire: frames in and out, the handshake, the heartbeat."""

    def __init__(self, handler: CommandHandler, *, read_fd: int, write_fd: int,
                 concurrency: int | None = None) -> None:
        self.handler = handler
        self.concurrency = max(1, concurrency or handler.concurrency)
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._codec: Codec = JSON
        self._max_frame_size = wire.DEFAULT_MAX_FRAME_SIZE
        self._decoder = FrameDecoder(self._max_frame_size)
        self._frames: collections.deque[bytes] = collections.deque()
        self._scratch = bytearray(_READ_SIZE)
        self._write_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._active: dict[int, CallContext] = {}
        self._eof = False
        self._reading = False  # threaded mode: the reader thread is running
        self._stopping = False
        self._protocol_error: ProtocolError | None = None
        self._heartbeat: float | None = None
        self._timing = False
        """The host asked for each result's service time (``st``, seconds)."""
        # serial mode: calls read while another ran; threaded mode: the hand-off queue
        self._backlog: collections.deque[CallContext] = collections.deque()
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Threaded mode: held by the reader while it reads and applies a batch of frames,
        # and by a call thread while it decides to start a call; notified after each
        # batch. Serial mode: uncontended.
        self._changed = threading.Condition()

    # -- wire ----------------------------------------------------------------------
    def _fill(self, timeout: float | None) -> bool:
        """Read what the wire has, waiting up to ``timeout`` (None: forever) for data.

        Returns False when nothing arrived in time. At end of stream (the host is gone)
        it sets ``_eof`` and cancels every call.
        """
        if self._eof:
            return False
        if self._decoder.failed is not None:  # after the frames that came before it
            raise self._decoder.failed
        if timeout is not None:
            ready, _, _ = select.select([self._read_fd], [], [], max(timeout, 0.0))
            if not ready:
                return False
        # Into one reused buffer: os.read(fd, 1 MiB) allocates (mmap) and frees a
        # megabyte for every read, three syscalls per call on the hot path.
        count = os.readv(self._read_fd, [self._scratch])
        if not count:
            self._eof = True
            self._cancel_all()
            return False
        with memoryview(self._scratch) as view:
            self._frames.extend(self._decoder.feed(view[:count]))
        return True

    def _unread(self) -> int:
        """Bytes the host has written that this side has not read yet."""
        try:
            count = fcntl.ioctl(self._read_fd, termios.FIONREAD, bytes(4))
        except OSError:
            return 0
        return int.from_bytes(count, sys.byteorder, signed=True)

    def _cancel_all(self) -> None:
        """Cancel every call, running or waiting, and wake those that wait (for credit, or
        in ``ctx.wait_cancelled``): the host is gone or unusable, so nothing may block
        the exit on a frame that will never come."""
        with self._changed:
            for ctx in list(self._active.values()):
                ctx._cancel()
            self._changed.notify_all()

    def _read_frame(self) -> bytes | None:
        """Blocking read of one frame payload; ``None`` at end of stream."""
        while not self._frames:
            if self._eof or (not self._fill(None) and self._eof):
                return None
        return self._frames.popleft()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        with self._write_lock:
            try:
                while view:
                    view = view[os.write(self._write_fd, view) :]
            except OSError as exc:  # EPIPE and friends: the host is gone
                raise HostGone from exc

    def send_result(self, call_id: int, value: Any, began: float) -> bool:
        """Send call ``call_id``'s result; with the host's ``timing``, how long its
        handler ran since ``began`` (``time.perf_counter()``) too: the pipeline's measure."""
        answer = {wire.TAG: wire.RESULT, "id": call_id, "value": value}
        if self._timing:
            answer["st"] = time.perf_counter() - began
        return self.send(answer)

    def send(self, message: dict[str, Any]) -> bool:
        """Encode and send ``message``; a result or chunk that cannot travel becomes an
        error frame for its call instead (returning False: the call is answered), so
        the worker stays in service."""
        try:
            frame = encode_frame(self._codec.encode(message), self._max_frame_size)
        except (PayloadError, ProtocolError) as exc:
            if message.get(wire.TAG) not in (wire.RESULT, wire.CHUNK, wire.RESULTS):
                raise
            self._send_error(message["id"], wire.KIND_PAYLOAD, None,
                             f"result cannot be sent: {exc}", etype="PayloadError")
            return False
        self._write(frame)
        return True

    def _send_error(self, call_id: int | None, kind: str, exc: BaseException | None,
                    message: str = "", etype: str = "") -> None:
        frame: dict[str, Any] = {wire.TAG: wire.ERROR, "id": call_id, "kind": kind,
                                 "etype": etype, "msg": message}
        if exc is not None:
            frame.update(describe_exception(exc))
            if kind != wire.KIND_HANDLER:
                frame.pop("retryable", None)
        try:
            self.send(frame)
        except PayloadError:
            # the description itself cannot travel (a message of many megabytes, a lone
            # surrogate): send one that can, rather than end the worker over it
            self.send(sendable_description(frame, self._max_frame_size))

    # -- handshake -----------------------------------------------------------------
    def handshake(self) -> None:
        """Read the host's hello (JSON), pick a codec, answer with a welcome (JSON)."""
        payload = self._read_frame()
        if payload is None:
            raise HostGone
        hello = JSON.decode(payload)
        if hello.get(wire.TAG) != wire.HELLO:
            raise ProtocolError(f"expected hello, got {hello.get(wire.TAG)!r}")
        offered = hello.get("codecs") or ["json"]
        if not isinstance(offered, list) or not all(isinstance(n, str) for n in offered):
            raise ProtocolError(f"malformed hello, codecs must be a list: {offered!r:.100}")
        usable = [name for name in offered if name in available_codecs()]
        if not usable:
            raise ProtocolError(
                f"host offers codecs {offered}, this worker has {available_codecs()}"
                " (install msgpack in the worker's environment, or use codec='json')")
        max_frame = hello.get("max_frame_size")
        if type(max_frame) is int and max_frame > 0:
            self._max_frame_size = max_frame
            self._decoder = FrameDecoder(max_frame)
        self._timing = hello.get("timing") is True
        heartbeat: Any = hello.get("heartbeat")
        if _is_number(heartbeat) and 0 < heartbeat < math.inf:
            self._heartbeat = float(heartbeat)
        threshold = hello.get("shm")
        use_shm = (isinstance(threshold, int) and threshold > 0 and usable[0] == "msgpack"
                   and shm.available())
        handler_type = type(self.handler)
        self._write(encode_frame(JSON.encode({
            wire.TAG: wire.WELCOME,
            "version": wire.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "codec": usable[0],
            "concurrency": self.concurrency,
            "capabilities": [*wire.CAPABILITIES, *([wire.SHM] if use_shm else [])],
            "python": sys.version.split()[0],
            "handler": f"{handler_type.__module__}:{handler_type.__qualname__}",
        }), self._max_frame_size))
        self._codec = get_codec(usable[0])
        if use_shm and isinstance(threshold, int):  # large results go out of band
            prefix = shm.segment_prefix(os.environ.get(shm.RUN_ID_ENV, "0-0"), os.getpid())
            self._codec = shm.SharedMemoryCodec(threshold, prefix, self._max_frame_size,
                                                track=False)
            keep_freed_memory()  # large buffers read out of segments land in warm memory

    def _report_protocol_error(self, exc: ProtocolError) -> None:
        sys.stderr.write(f"snakepit.bridge: protocol error from host: {exc}\n")
        try:
            self._send_error(None, wire.KIND_PROTOCOL, None, str(exc))
        except HostGone:
            pass

    def _beat(self) -> None:
        """Heartbeat thread: proves the process is alive even while a call runs.

        It needs the GIL, so a handler stuck in native code that holds it (or a
        SIGSTOPped process) goes silent, and the host replaces the worker.
        """
        assert self._heartbeat is not None
        frame = encode_frame(self._codec.encode({wire.TAG: wire.BEAT}), self._max_frame_size)
        while True:
            time.sleep(self._heartbeat)
            try:
                self._write(frame)
            except HostGone:
                return
