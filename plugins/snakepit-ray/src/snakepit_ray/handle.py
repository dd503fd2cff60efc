"""The host's handle on a worker in a Ray actor: the ``WorkerProcess`` the pool's slot
supervises, made of the three authenticated connections and the actor's handle."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import struct
from typing import Any

import trio

from snakepit_ray import actor as actor_module
from snakepit_ray.driver import kill_actor, ray_call

log = logging.getLogger("snakepit.ray")

RELEASE_TIMEOUT = 10.0
"""Seconds to wait for Ray to confirm a killed actor is gone (then a warning)."""

class RayWorker:
    """The host's handle on a worker in a Ray actor (a ``WorkerProcess``).

    ``stdin`` and ``stdout`` are one TCP socket straight to the worker, ``stderr``
    another; the control connection to the actor carries signals one way and the exit
    status the other. SIGKILL also cuts the wire at once, so the host is done with the
    worker even if its node no longer answers. Exiting releases the actor with
    ``ray.kill``; an actor that dies by itself (its node failed, say) cuts the
    connections, so the worker's calls fail with ``WorkerCrashed`` as for a crash.
    """

    def __init__(self, worker_id: str, handle: Any, pid: int, control: trio.socket.SocketType,
                 stderr: trio.socket.SocketType, wire: trio.socket.SocketType,
                 kill_timeout: float) -> None:
        self.id = worker_id
        self.actor = handle
        self.pid = pid
        self._control, self._stderr, self._wire = control, stderr, wire
        self.stdin = self.stdout = wire.fileno()
        self.stderr = stderr.fileno()
        self._control_fd = control.fileno()
        self._kill_timeout = kill_timeout
        self._report = bytearray()
        self._status: int | None = None
        self._returncode: int | None = None
        self._killed = False
        self._kill_sent = False
        self._exited = False
        self.actor_gone = trio.Event()
        self.death: BaseException | None = None
        """What Ray said when the actor died, if it died by itself."""

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def watch(self, gone: concurrent.futures.Future[Any]) -> None:
        """Learn from ``gone`` (the actor's ``wait_gone``) when the actor dies."""
        token = trio.lowlevel.current_trio_token()

        def died(future: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._actor_died, future.exception())

        gone.add_done_callback(died)

    def _actor_died(self, error: BaseException | None) -> None:
        self.actor_gone.set()
        if not self._kill_sent and not self._exited:
            self.death = error
            log.warning("the Ray actor of worker %s died: %s", self.id, error)
            self._cut(self._wire, self._control)

    @staticmethod
    def _cut(*sockets: trio.socket.SocketType) -> None:
        """End the host's side now: a reader waiting on it sees end of file."""
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- WorkerProcess -----------------------------------------------------------------
    def signal_group(self, signum: int) -> None:
        if self._exited:
            return
        with contextlib.suppress(OSError):  # 2 bytes: a connected socket has room
            os.write(self._control_fd, actor_module.SIGNAL + bytes([signum]))
        if signum == signal.SIGKILL:
            self._killed = True
            self._cut(self._wire)

    async def wait_exit(self) -> None:
        if self._exited:
            return
        if self._killed:  # the actor's report of the kill, if it comes soon; then ray.kill
            with trio.move_on_after(min(1.0, self._kill_timeout)):
                await self._read_report()
        else:
            await self._read_report()
        await self._release()
        self._exited = True

    async def _read_report(self) -> None:
        """Until the actor reports the worker's exit, or the control connection ends."""
        while self._status is None:
            if len(self._report) >= 9 and self._report[:1] == actor_module.EXITED:
                self._status = struct.unpack("!q", self._report[1:9])[0]
                return
            await trio.lowlevel.wait_readable(self._control_fd)
            try:
                data = os.read(self._control_fd, 64)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                return
            self._report += data

    async def _release(self) -> None:
        """``ray.kill`` the actor and wait (bounded) for Ray to confirm it is gone."""
        if not self._kill_sent:
            self._kill_sent = True
            await ray_call(kill_actor, self.actor)
        with trio.move_on_after(RELEASE_TIMEOUT) as waiting:
            await self.actor_gone.wait()
        if waiting.cancelled_caught:
            log.warning("Ray has not confirmed that the actor of worker %s is gone", self.id)

    def reap(self) -> int:
        if self._returncode is None:
            self._returncode = self._status if self._status is not None else -signal.SIGKILL
        return self._returncode

    def close_pipes(self) -> None:
        for sock in (self._wire, self._stderr, self._control):
            sock.close()  # trio's close tells waiters first (notify_closing)
        self.stdin = self.stdout = self.stderr = self._control_fd = -1


__all__ = ["RELEASE_TIMEOUT", "RayWorker"]
