"""The host's end of one fork-server template: asking it for workers, adopting them.

:class:`Template` sends fork requests over the template's control socket, with the
new worker's pipe ends passed as file descriptors, and adopts each worker through a
short-lived intermediate process while this process is a *child subreaper*
(:func:`adopting_orphans`), so every forked worker is our child. The supervision of
the template (restarts, giving up) is :class:`~snakepit.process.forkserver.ForkServer`'s.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import trio

from snakepit import _realtime as realtime
from snakepit.errors import WorkerStartupError
from snakepit.process.launch import OsProcess, grow_pipe
from snakepit.worker.stderr import StderrLog

__all__ = ["Template", "TemplateGone", "adopting_orphans"]

log = logging.getLogger("snakepit.forkserver")

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


class TemplateGone(Exception):
    """The template exited, or stopped answering, during a fork request."""


# -- adopting forked workers ---------------------------------------------------------
_adopting = 0
_set_by_us = False


_libc: ctypes.CDLL | None = None


def _prctl(option: int, value: Any) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    result: int = _libc.prctl(option, value, 0, 0, 0)
    if result != 0:
        raise OSError(ctypes.get_errno(), "prctl failed")
    return result


@contextlib.contextmanager
def adopting_orphans() -> Iterator[None]:
    """Be a child subreaper (``PR_SET_CHILD_SUBREAPER``) for the duration of the block.

    Nested and concurrent users share the mark; it is cleared when the last leaves,
    unless this process was a subreaper already (then it is left alone).
    """
    global _adopting, _set_by_us
    if _adopting == 0:
        already = ctypes.c_int(0)
        _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(already))
        _set_by_us = not already.value
        if _set_by_us:
            _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _adopting += 1
    try:
        yield
    finally:
        _adopting -= 1
        if _adopting == 0 and _set_by_us:
            _prctl(_PR_SET_CHILD_SUBREAPER, 0)
            _set_by_us = False


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return int(file.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


# -- the template --------------------------------------------------------------------
class _Request:
    """One worker to fork: its environment and the two ends of its three pipes."""

    def __init__(self, env: Mapping[str, str], cwd: str | None, handler: str) -> None:
        self.payload = json.dumps({"env": dict(env), "cwd": cwd, "handler": handler}).encode()
        child_in, self.host_in = os.pipe()
        self.host_out, child_out = os.pipe()
        self.host_err, child_err = os.pipe()
        grow_pipe(self.host_in)
        grow_pipe(self.host_out)
        self.child_fds = (child_in, child_out, child_err)
        self.answer: Any = None
        self.done = trio.Event()

    def process(self) -> OsProcess:
        """The forked worker, once answered.

        Raises:
            WorkerStartupError: the template reported why it could not fork.
        """
        try:
            if "error" in self.answer:
                raise WorkerStartupError(
                    f"the fork server could not fork a worker: {self.answer['error']}")
            pid = int(self.answer["pid"])
            if _parent_of(pid) != os.getpid():
                raise WorkerStartupError(f"forked worker {pid} was not handed over to this "
                                         "process")
        except BaseException:
            self.close_host_ends()
            raise
        for fd in (self.host_in, self.host_out, self.host_err):
            os.set_blocking(fd, False)
        return OsProcess(None, self.host_in, self.host_out, self.host_err, pid=pid)

    def close_host_ends(self) -> None:
        for fd in (self.host_in, self.host_out, self.host_err):
            os.close(fd)


class Template:
    """One template process and its control socket.

    Fork requests that arrive together go out as one batch: the first caller sends
    every request queued by then and reads the answers, which the template gives in
    order once the batch's workers have been handed over.
    """

    def __init__(self, process: OsProcess, control: trio.socket.SocketType,
                 stderr: StderrLog, handler: str, timeout: float) -> None:
        self.process = process
        self.control = control
        self.stderr = stderr
        self.handler = handler
        self.timeout = timeout
        self.gone = False
        self._queue: list[_Request] = []
        self._sending = False

    async def fork(self, env: Mapping[str, str], cwd: str | None) -> OsProcess:
        """Fork one worker with fresh pipes; it is our child when this returns.

        Shielded (and bounded by the timeout): once a request is out, its answer -- the
        pid -- must be read, or a worker would exist that nobody supervises.

        Raises:
            TemplateGone: the template died or hung; it has been killed.
            WorkerStartupError: the template could not fork (it reported why).
        """
        if self.gone:
            raise TemplateGone
        request = _Request(env, cwd, self.handler)
        self._queue.append(request)
        with trio.CancelScope(shield=True):
            if not self._sending:
                self._sending = True
                try:
                    # let the other slots starting in this scheduler batch queue theirs
                    await trio.lowlevel.checkpoint()
                    while self._queue:
                        batch, self._queue = self._queue, []
                        await self._exchange(batch)
                finally:
                    self._sending = False
            await request.done.wait()
        if request.answer is None:
            request.close_host_ends()
            raise TemplateGone
        return request.process()

    async def _exchange(self, batch: list[_Request]) -> None:
        with realtime.move_on_after(self.timeout):
            try:
                with adopting_orphans():
                    for request in batch:
                        await self.control.sendmsg(
                            [request.payload],
                            [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                              array.array("i", request.child_fds))])
                    for request in batch:
                        reply = await self.control.recv(1 << 16)
                        request.answer = json.loads(reply) if reply else None
                        if request.answer is None:
                            break
            except (OSError, ValueError, trio.ClosedResourceError):
                pass
        for request in batch:
            for fd in request.child_fds:
                os.close(fd)
            request.done.set()
        if any(request.answer is None for request in batch):
            self.gone = True  # died, hung or garbled: no later answer can be trusted
            self.process.signal_group(signal.SIGKILL)
