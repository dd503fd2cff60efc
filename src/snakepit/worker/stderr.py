"""A worker's stderr: forwarded to logging line by line, the recent tail kept.

Whatever a worker writes, the host's cost stays linear in the bytes and its memory
bounded (issue 15, item 7: a progress bar that never writes a newline used to be
re-split whole on every read, quadratic on the event loop):

- ``\\n`` and ``\\r`` both end a line (``\\r\\n`` is one ending). A progress bar
  (tqdm) redraws its line after a ``\\r``; of the lines ended by ``\\r`` one after the
  other in one read, only the last is logged, the state a terminal would show. An
  empty line ended by ``\\r`` is not logged.
- A line is cut at :data:`MAX_LINE` bytes: the rest, up to its end, is dropped and
  counted (``[... 123 bytes cut]``). So the line being collected, and each of the
  :data:`TAIL_LINES` lines kept for :class:`~snakepit.errors.WorkerStartupError`, hold
  at most :data:`MAX_LINE` bytes.
- Each read is at most 64 KiB and is scanned by C code (``bytes.split``,
  ``rfind``); Python work is per line, and there is no Python work per byte.
"""

from __future__ import annotations

import collections
import logging
import os

import trio

stderr_log = logging.getLogger("snakepit.worker.stderr")

TAIL_LINES = 40
"""Lines kept for a startup error's stderr tail."""

MAX_LINE = 8192
"""Longest line forwarded, in bytes; the rest of a longer line is dropped and counted."""

_READ_SIZE = 65536


class StderrLog:
    """Reads a worker's stderr pipe; each line goes to ``snakepit.worker.stderr``.

    Records carry ``worker_id`` in their ``extra``; the last lines are kept for
    :class:`~snakepit.errors.WorkerStartupError`.
    """

    def __init__(self, worker_id: str, fd: int) -> None:
        self.worker_id = worker_id
        self.fd = fd
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._partial = bytearray()
        """The line being collected (at most MAX_LINE bytes)."""
        self._cut = 0
        """Bytes of that line dropped past MAX_LINE."""
        self._after_cr = False
        """The last read ended with ``\\r``: a ``\\n`` opening the next completes it."""

    def _take(self, data: bytes) -> None:
        if self._after_cr and data[:1] == b"\n":
            data = data[1:]  # the second half of a \r\n split between two reads
        self._after_cr = data[-1:] == b"\r"
        *complete, rest = data.split(b"\n")
        for piece in complete:
            self._take_piece(piece[:-1] if piece[-1:] == b"\r" else piece)
            self._emit(progress=False)
        self._take_piece(rest)

    def _take_piece(self, piece: bytes) -> None:
        """Add text without ``\\n``: its ``\\r``-ended lines are logged (the last of
        them), what follows the last ``\\r`` is kept as the line being collected."""
        last = piece.rfind(b"\r")
        if last >= 0:
            previous = piece.rfind(b"\r", 0, last)
            if previous >= 0:  # the line being collected was redrawn: drop it
                self._partial.clear()
                self._cut = 0
            self._append(piece, previous + 1, last)
            self._emit(progress=True)
        self._append(piece, last + 1, len(piece))

    def _append(self, piece: bytes, start: int, stop: int) -> None:
        partial = self._partial
        take = min(MAX_LINE - len(partial), stop - start)
        if take > 0:
            partial += piece[start:start + take]
        else:
            take = 0
        self._cut += stop - start - take

    def _emit(self, *, progress: bool) -> None:
        """Log the line collected so far and start a new one."""
        line = self._partial.decode("utf-8", "replace").rstrip()
        if self._cut:
            line += f" [... {self._cut} bytes cut]"
        self._partial.clear()
        self._cut = 0
        if progress and not line:
            return
        self.tail.append(line)
        stderr_log.info("[%s] %s", self.worker_id, line, extra={"worker_id": self.worker_id})

    async def pump(self) -> None:
        """Forward lines until EOF (a grandchild holding stderr may delay that)."""
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:  # a reset socket (a remote worker's stderr): as at EOF
                break
            if not data:
                break
            self._take(data)
        self.drain()

    def drain(self) -> str:
        """Read whatever the pipe holds right now, without waiting; return the tail."""
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except OSError:  # BlockingIOError (nothing more now), or already closed
                break
            if not data:
                break
            self._take(data)
        if self._partial or self._cut:
            self._emit(progress=False)
        return "\n".join(self.tail)
