"""The framed connection to one worker process: its codec and its two pipe ends
(or one connected socket, for a worker on another machine).

Writes are synchronous on purpose: a frame written to a pipe with room costs one
syscall and no task switch (~10 µs each, DESIGN.md); only when the pipe is full do the
remaining bytes wait for the flusher task. Reads parse every complete frame of each
read, so one wake-up can settle many calls.
"""

from __future__ import annotations

import fcntl
import os
import select
import sys
import termios
from collections.abc import Callable

import trio

from snakepit.protocol.codecs import JSON, Codec
from snakepit.protocol.framing import FrameDecoder, encode_frame
from snakepit.protocol.messages import Message, from_wire, to_wire

_READ_SIZE = 1 << 20
# Reads handled back to back before the reader yields to let callers run.
_READS_PER_YIELD = 8


class Connection:
    """Frames over a pair of non-blocking file descriptors (the worker's stdin/stdout).

    Both may be one connected socket (a worker on another machine): ``os.read`` and
    ``os.write`` work on it alike, and a reset connection reads as end of file.
    """

    def __init__(self, write_fd: int, read_fd: int, max_frame_size: int) -> None:
        self._write_fd = write_fd
        self._read_fd = read_fd
        self.max_frame_size = max_frame_size
        self.codec: Codec = JSON
        self._decoder = FrameDecoder(max_frame_size)
        self._unsent = bytearray()
        self._unsent_lot = trio.lowlevel.ParkingLot()
        self._read_lot = trio.lowlevel.ParkingLot()  # woken after each read and at the end
        self._reading = True
        self.last_heard = trio.current_time()
        """When the worker last sent anything (the heartbeat watchdog reads it)."""

    def send(self, message: Message) -> None:
        """Write one frame now, or queue it behind bytes the pipe has not taken yet.

        Raises:
            PayloadError: the message cannot be encoded or exceeds ``max_frame_size``.
        """
        frame = encode_frame(self.codec.encode(to_wire(message)), self.max_frame_size)
        if self._unsent:
            self._unsent += frame
            return
        try:
            written = os.write(self._write_fd, frame)
        except BlockingIOError:
            written = 0
        except OSError:  # the worker is gone; the reader will see EOF and report it
            return
        if written < len(frame):
            self._unsent += frame[written:]
            self._unsent_lot.unpark_all()

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
        """Queue one frame for the flusher task instead of writing it now: for frames
        nobody waits on (a session's drop), so that a burst of them costs one write
        and one wake-up of the worker, not one each. Order with :meth:`send` is kept.

        Raises:
            PayloadError: the message cannot be encoded or exceeds ``max_frame_size``.
        """
        frame = encode_frame(self.codec.encode(to_wire(message)), self.max_frame_size)
        if not self._unsent:
            self._unsent_lot.unpark_all()
        self._unsent += frame

    async def flush_forever(self) -> None:
        """Write queued bytes as the pipe takes them (the flusher task)."""
        fd = self._write_fd
        while True:
            if not self._unsent:
                await self._unsent_lot.park()
                continue
            await trio.lowlevel.wait_writable(fd)
            try:
                written = os.write(fd, self._unsent)
            except BlockingIOError:
                continue
            except OSError:
                self._unsent.clear()
                return
            del self._unsent[:written]

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

    async def read_forever(self, deliver: Callable[[Message], None]) -> None:
        """Decode every frame and ``deliver`` it, until EOF.

        Raises:
            ProtocolError: a malformed or oversized frame.
        """
        fd = self._read_fd
        decode, decoder = self.codec.decode, self._decoder
        reads = 0
        try:
            while True:
                try:
                    data = os.read(fd, _READ_SIZE)
                except BlockingIOError:
                    reads = 0
                    await trio.lowlevel.wait_readable(fd)
                    continue
                except OSError:  # a reset socket (ECONNRESET): the worker is gone
                    return
                if not data:
                    return
                self.last_heard = trio.current_time()
                for payload in decoder.feed(data):
                    deliver(from_wire(decode(payload)))
                if self._read_lot:
                    self._read_lot.unpark_all()
                reads += 1
                if reads >= _READS_PER_YIELD:
                    reads = 0
                    await trio.lowlevel.checkpoint()
        finally:
            self._reading = False
            self._read_lot.unpark_all()

    async def wait_read(self) -> None:
        """Return once the reader has taken and delivered what the worker wrote so far
        (or has stopped reading)."""
        while self._reading and self.unread_bytes():
            await self._read_lot.park()
