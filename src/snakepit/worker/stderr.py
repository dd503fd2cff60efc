"""A worker's stderr: forwarded to logging line by line, the recent tail kept."""

from __future__ import annotations

import collections
import logging
import os

import trio

stderr_log = logging.getLogger("snakepit.worker.stderr")

_TAIL_LINES = 40


class StderrLog:
    """Reads a worker's stderr pipe; each line goes to ``snakepit.worker.stderr``.

    Records carry ``worker_id`` in their ``extra``; the last lines are kept for
    :class:`~snakepit.errors.WorkerStartupError`.
    """

    def __init__(self, worker_id: str, fd: int) -> None:
        self.worker_id = worker_id
        self.fd = fd
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._partial = bytearray()

    def _take(self, data: bytes) -> None:
        partial = self._partial
        partial += data
        *lines, rest = partial.split(b"\n")
        partial[:] = rest
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            stderr_log.info("[%s] %s", self.worker_id, line,
                            extra={"worker_id": self.worker_id})

    async def pump(self) -> None:
        """Forward lines until EOF (a grandchild holding stderr may delay that)."""
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                data = os.read(self.fd, 65536)
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
                data = os.read(self.fd, 65536)
            except OSError:  # BlockingIOError (nothing more now), or already closed
                break
            if not data:
                break
            self._take(data)
        if self._partial:
            self._take(b"\n")
        return "\n".join(self.tail)
