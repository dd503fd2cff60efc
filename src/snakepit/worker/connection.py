"""The framed connection to one worker process: its codec and its two pipe ends
(or one connected socket, for a worker on another machine).

Writes are *corked* for the rest of the scheduler batch: ``send`` queues the frame and
an :class:`trio.abc.Instrument` writes every connection's queue with one ``writev``
just before Trio next waits for I/O, that is once every runnable task has run. A
reader that settles eight calls wakes eight callers, each sends its next call, and the
worker gets all eight in one syscall and one wake-up instead of eight: on the 2-core
reference box that took the worker's CPU per trivial call from ~26 µs to ~13-20 µs,
and the host's by ~3 µs (docs/performance.md). No frame waits longer than the batch
that sent it, and nobody needs a task switch to flush. Only when the pipe is full do
the remaining bytes wait for the flusher task.

Reads parse every complete frame of each read, so one wake-up can settle many calls;
``result`` frames skip the cattrs structuring (the commonest frame by far).
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import select
import sys
import termios
from collections.abc import Callable
from typing import Any

import trio

from snakepit import _realtime as realtime
from snakepit.errors import PayloadError
from snakepit.protocol import wire
from snakepit.protocol.codecs import JSON, Codec
from snakepit.protocol.framing import HEADER, FrameDecoder
from snakepit.protocol.messages import Message, from_wire, to_wire

log = logging.getLogger("snakepit.worker")

_READ_SIZE = 1 << 20
# Reads handled back to back before the reader yields to let callers run.
_READS_PER_YIELD = 8
# Buffers handed to one writev (Linux's IOV_MAX is 1024).
_IOV_MAX = 1024


class Connection:
    """Frames over a pair of non-blocking file descriptors (the worker's stdin/stdout).

    Both may be one connected socket (a worker on another machine): ``readv`` and
    ``writev`` work on it alike, and a reset connection reads as end of file.
    """

    def __init__(self, write_fd: int, read_fd: int, max_frame_size: int) -> None:
        self._write_fd = write_fd
        self._read_fd = read_fd
        self.max_frame_size = max_frame_size
        self.codec: Codec = JSON
        self._decoder = FrameDecoder(max_frame_size)
        self._unsent: collections.deque[bytes | memoryview] = collections.deque()
        """Frame pieces (headers and payloads) not written yet, in order."""
        self._blocked = False
        """The pipe was full: the flusher task owns ``_unsent`` until it drains."""
        self._flusher_lot = trio.lowlevel.ParkingLot()
        self._batch = _batch_writer()
        self._read_lot = trio.lowlevel.ParkingLot()  # woken after each read and at the end
        self._reading = True
        self.last_heard = realtime.monotonic()
        """When the worker last sent anything (the heartbeat watchdog reads it)."""
        self.write_error: BaseException | None = None
        """What a write to this worker raised (not a full or closed pipe: a fault in the
        host, say); the connection then writes nothing more."""
        self.on_write_error: Callable[[BaseException], None] | None = None
        """Called once with :attr:`write_error` (the worker's owner kills it, so that its
        calls fail with that reason and the slot replaces it)."""

    def send(self, message: Message) -> None:
        """Queue one frame; it is written before Trio next waits for I/O.

        Raises:
            PayloadError: the message cannot be encoded or exceeds ``max_frame_size``.
        """
        self.send_map(to_wire(message))

    def send_map(self, data: dict[str, Any]) -> None:
        """:meth:`send` for a message already in its wire form (the call hot path).

        Raises:
            PayloadError: the map cannot be encoded or exceeds ``max_frame_size``.
        """
        payload = self.codec.encode(data)
        size = len(payload)
        if size > self.max_frame_size:
            raise PayloadError(f"frame of {size} bytes exceeds max_frame_size "
                               f"{self.max_frame_size}")
        unsent = self._unsent
        # Header and payload stay separate buffers: writev sends both, and a large
        # payload is never copied again after encoding.
        unsent.append(HEADER.pack(size))
        unsent.append(payload)
        if not self._blocked and len(unsent) == 2:
            self._batch.dirty.append(self)

    def close(self) -> None:
        """Forget what is unsent: the pipes are about to be closed, and their fd numbers
        may soon belong to another worker's pipes."""
        self._write_fd = -1
        self._unsent.clear()

    def write_batch(self) -> None:
        """Write what is queued now (the batch writer calls this once per batch)."""
        if self._blocked or not self._unsent:
            return
        if self._write_fd < 0 or self.write_error is not None:
            self._unsent.clear()
            return
        if not self._write_some():
            self._blocked = True
            self._flusher_lot.unpark_all()
            # The loop already chose how long to sleep; make it look again so the
            # flusher task runs and waits for the pipe to drain.
            trio.lowlevel.current_trio_token().run_sync_soon(_nothing)

    def write_failed(self, exc: BaseException) -> None:
        """A write raised ``exc``: stop writing to this worker and report it once, so
        that this worker fails with a clear error while every other keeps going."""
        if self.write_error is not None:
            return
        self.write_error = exc
        self._unsent.clear()
        self._blocked = False
        log.error("writing to a worker (fd %d) failed: %r", self._write_fd, exc,
                  exc_info=exc)
        if self.on_write_error is not None:
            try:
                self.on_write_error(exc)
            except Exception:  # it runs inside the batch writer: never let it escape
                log.exception("on_write_error raised")

    def write_now(self) -> None:
        """Write what is queued at once, not at the end of the batch (rare paths that
        must know a frame is in the pipe, such as a cancel)."""
        self.write_batch()

    @property
    def flushed(self) -> bool:
        """Whether every frame sent so far has been written to the pipe."""
        return not self._unsent

    def unread_bytes(self) -> int | None:
        """Bytes the worker has written that the reader has not taken yet (None: unknown).

        The reader delivers every frame of a read before any other task runs, so 0 means
        the host has acted on everything the worker wrote until now.
        """
        try:
            count = fcntl.ioctl(self._read_fd, termios.FIONREAD, bytes(4))
        except (OSError, ValueError):  # closed, or a transport without FIONREAD
            return None
        return int.from_bytes(count, sys.byteorder, signed=True)

    async def wait_read(self) -> None:
        """Return once the reader has taken and delivered what the worker wrote so far
        (or has stopped reading)."""
        while self._reading and self.unread_bytes():
            await self._read_lot.park()

    def _write_some(self) -> bool:
        """One writev of the queue; True when everything was written."""
        unsent = self._unsent
        try:
            if len(unsent) <= _IOV_MAX:
                written = os.writev(self._write_fd, unsent)
            else:
                written = os.writev(self._write_fd, [unsent[i] for i in range(_IOV_MAX)])
        except BlockingIOError:
            return False
        except OSError:  # the worker is gone; the reader will see EOF and report it
            unsent.clear()
            return True
        while written:
            piece = unsent[0]
            if written >= len(piece):
                written -= len(piece)
                unsent.popleft()
            else:
                unsent[0] = memoryview(piece)[written:]
                written = 0
        return not unsent

    def has_unread_data(self) -> bool:
        """Whether the worker has written bytes (or closed its end) that the reader has
        not taken yet: after a stall of the host they prove the worker alive."""
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        try:
            return bool(poller.poll(0))
        except OSError:
            return False

    def send_later(self, message: Message) -> None:
        """:meth:`send`, for frames nobody waits on (a session's drop): a burst of them
        costs one write and one wake-up of the worker, not one each -- as every frame
        does now, since all are written once per scheduler batch. Order is kept.

        Raises:
            PayloadError: the message cannot be encoded or exceeds ``max_frame_size``.
        """
        self.send(message)

    async def flush_forever(self) -> None:
        """Write queued bytes as a full pipe takes them (the flusher task)."""
        fd = self._write_fd
        while True:
            if not self._blocked or fd != self._write_fd:
                await self._flusher_lot.park()
                continue
            await trio.lowlevel.wait_writable(fd)
            try:
                if self._write_some():
                    self._blocked = False
            except Exception as exc:
                self.write_failed(exc)

    async def read_payloads(self) -> list[bytes] | None:
        """Wait for data and return every complete frame payload in it; None at EOF."""
        fd = self._read_fd
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:  # a reset socket: the worker is gone, as at end of file
                return None
            if not data:
                return None
            payloads = self._decoder.feed(data)
            if payloads:
                return payloads

    async def read_forever(self, deliver: Callable[[Message], None],
                           deliver_result: Callable[[int, Any, Any], None] | None = None
                           ) -> None:
        """Decode every frame and ``deliver`` it, until EOF.

        ``deliver_result(id, value, st)``, when given, takes well-formed ``result`` frames
        directly: structuring them through cattrs cost ~0.7 µs a call for nothing.

        Raises:
            ProtocolError: a malformed or oversized frame.
        """
        fd = self._read_fd
        decode, decoder = self.codec.decode, self._decoder
        # One reused buffer: os.read(fd, 1 MiB) allocates (mmap) and frees a megabyte
        # for every read, three syscalls per call on the hot path.
        scratch = memoryview(bytearray(_READ_SIZE))
        try:
            await self._read_frames(fd, decode, decoder, scratch, deliver, deliver_result)
        finally:
            self._reading = False
            self._read_lot.unpark_all()

    async def _read_frames(self, fd: int, decode: Callable[[bytes | bytearray], Any],
                           decoder: FrameDecoder, scratch: memoryview,
                           deliver: Callable[[Message], None],
                           deliver_result: Callable[[int, Any, Any], None] | None) -> None:
        reads = 0
        read_lot = self._read_lot
        while True:
            window = decoder.window()
            try:
                # the rest of a large payload goes straight into its own buffer
                count = os.readv(fd, [scratch if window is None else window])
            except BlockingIOError:
                reads = 0
                await trio.lowlevel.wait_readable(fd)
                continue
            except OSError:  # a reset socket (ECONNRESET): the worker is gone
                return
            finally:
                if window is not None:
                    window.release()
            if not count:
                return
            self.last_heard = realtime.monotonic()
            _deliver(decoder.feed(scratch[:count]) if window is None
                     else decoder.filled(count), decode, deliver, deliver_result)
            if decoder.failed is not None:  # a bad header after the frames just delivered
                raise decoder.failed
            if read_lot:
                read_lot.unpark_all()
            if window is None and count < _READ_SIZE:
                # A short read drained the pipe: wait for it to fill rather than try a
                # read that would fail with EAGAIN (one syscall per wake-up saved).
                reads = 0
                await trio.lowlevel.wait_readable(fd)
                continue
            reads += 1
            if reads >= _READS_PER_YIELD:
                reads = 0
                await trio.lowlevel.checkpoint()


def _nothing() -> None:
    pass


class _BatchWriter(trio.abc.Instrument):
    """Writes the corked frames of every connection once per scheduler batch."""

    def __init__(self) -> None:
        self.dirty: list[Connection] = []

    def before_io_wait(self, timeout: float) -> None:
        # Called by the run loop after every batch of task steps, before epoll. An
        # instrument that raises is removed by Trio, and every worker would go silent:
        # so a write error is that connection's alone.
        if self.dirty:
            dirty, self.dirty = self.dirty, []
            for connection in dirty:
                try:
                    connection.write_batch()
                except Exception as exc:
                    connection.write_failed(exc)


_BATCH_WRITER: trio.lowlevel.RunVar[_BatchWriter] = trio.lowlevel.RunVar(
    "snakepit_batch_writer")


def _batch_writer() -> _BatchWriter:
    """This Trio run's batch writer, installed on first use (and left in place: with
    nothing queued it costs one list check per loop iteration)."""
    try:
        return _BATCH_WRITER.get()
    except LookupError:
        writer = _BatchWriter()
        trio.lowlevel.add_instrument(writer)
        _BATCH_WRITER.set(writer)
        return writer


def _deliver(payloads: list[bytes] | list[bytes | bytearray],
             decode: Callable[[bytes | bytearray], Any], deliver: Callable[[Message], None],
             deliver_result: Callable[[int, Any, Any], None] | None) -> None:
    """Decode and hand on the frames one read completed: results by the fast path.

    A function of its own so that nothing of these frames stays referenced while the
    reader waits for the next (as its loop's locals would): a result's shared-memory
    views must go back to their pool as soon as the caller drops them, not at the next
    frame -- a frame's columns were fresh segments, page faults and all, on the round
    trip after a large one.
    """
    for payload in payloads:
        message = decode(payload)
        if (deliver_result is not None and message.get(wire.TAG) == wire.RESULT
                and type(call_id := message.get("id")) is int):
            deliver_result(call_id, message.get("value"), message.get("st"))
        else:
            deliver(from_wire(message))
