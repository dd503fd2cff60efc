"""The Ray actor behind one worker slot: it runs the worker process on its node.

It imports only the standard library and Ray. Its life:

1. ``__init__`` listens on the node's address (``bind`` overrides it; never all
   interfaces unless asked), on a port the kernel picks.
2. The host connects three times. Each connection must pass the handshake of
   :mod:`snakepit_ray.auth` within ``AUTH_TIMEOUT`` or is dropped and logged; a
   connection that passes becomes the *control* channel, the worker's *stderr* or its
   *wire*. Once all three are in, the listener closes: nobody else can connect.
3. The worker process (the snakepit bridge, or any adapter's command) starts in its own
   session with the wire socket as its stdin and stdout and the stderr socket as its
   stderr, so the host and the worker talk directly and no byte passes through the
   actor. It reports its pid on the control channel.
4. On the control channel the host asks for signals (``S`` + signal number), and the
   actor reports the worker's exit (``X`` + status) once it has killed what is left of
   the worker's process group and reaped it. The end of the control channel (the host
   died, or dropped it) kills the worker's group.

The worker dies with the actor: the bridge asks Linux for SIGKILL when the thread that
started it exits (``PR_SET_PDEATHSIG``), and that thread waits for the worker, so it
exits only with the worker -- or with the whole actor process, on ``ray.kill`` or a
node failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from snakepit_ray.auth import ROLES, AuthError, serve_handshake

log = logging.getLogger("snakepit.ray.actor")

AUTH_TIMEOUT = 10.0
"""Seconds a connection has to complete the handshake."""

STARTED = b"P"   # + !q pid
FAILED = b"F"    # + !I length + utf-8 message
EXITED = b"X"    # + !q exit status (negative: killed by that signal)
SIGNAL = b"S"    # + 1 byte signal number (host -> actor)


class SnakepitWorker:
    """One worker slot's process on a Ray node (see the module docstring)."""

    def __init__(self, secret: bytes, argv: list[str], env: dict[str, str], cwd: str | None,
                 own_python: bool, bind: str | None, accept_timeout: float) -> None:
        import ray

        self._secret = secret
        self._argv = [sys.executable, *argv[1:]] if own_python else list(argv)
        self._env = env
        self._cwd = cwd
        self._node_ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        context = ray.get_runtime_context()
        self._node_id = context.get_node_id()
        self._actor_id = context.get_actor_id() or ""  # hex; None only outside an actor
        host = bind or self._node_ip
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, 0), family=family, backlog=16)
        self._listener.settimeout(0.2)
        port = self._listener.getsockname()[1]
        reachable = self._node_ip if host in ("0.0.0.0", "::", "") else host
        self._address = (reachable, port)
        self._deadline = time.monotonic() + accept_timeout
        self._changed = threading.Condition()
        self._connections: dict[bytes, socket.socket] = {}
        self._closed = False
        self._rejections: list[str] = []
        self._pid: int | None = None
        self._reaped = False
        self._group_lock = threading.Lock()
        threading.Thread(target=self._accept, name="snakepit-accept", daemon=True).start()
        threading.Thread(target=self._run, name="snakepit-worker", daemon=True).start()

    # -- methods the host calls ----------------------------------------------------------
    def address(self) -> tuple[str, int, str, int, str]:
        """(host, port) to connect to, the node's id, this actor's pid and its Ray actor
        id (hex; from Ray's public runtime context, not the handle's private id)."""
        return self._address[0], self._address[1], self._node_id, os.getpid(), self._actor_id

    def listening_on(self) -> tuple[Any, ...]:
        """The listener's own address (tests check it is not every interface)."""
        with contextlib.suppress(OSError):
            return tuple(self._listener.getsockname())
        return ()

    def rejections(self) -> list[str]:
        """Why each connection that failed the handshake was dropped."""
        return list(self._rejections)

    def wait_gone(self) -> None:
        """Never returns: its result (an error) tells the host the actor has died."""
        threading.Event().wait()

    # -- accepting -----------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed and time.monotonic() < self._deadline:
            try:
                connection, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=self._authenticate, args=(connection, peer),
                             name="snakepit-auth", daemon=True).start()
        with self._changed:
            self._close_listener()
            self._changed.notify_all()

    def _authenticate(self, connection: socket.socket, peer: Any) -> None:
        connection.settimeout(AUTH_TIMEOUT)
        try:
            role = serve_handshake(connection, self._secret)
        except (AuthError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            self._reject(connection, peer, reason)
            return
        with self._changed:
            if self._closed or role in self._connections:
                self._reject(connection, peer, f"{ROLES[role]} connection already open")
                return
            self._connections[role] = connection
            if len(self._connections) == len(ROLES):
                self._close_listener()
            self._changed.notify_all()

    def _reject(self, connection: socket.socket, peer: Any, reason: str) -> None:
        log.warning("snakepit-ray: dropped an unauthenticated connection from %s: %s",
                    peer, reason)
        self._rejections.append(f"{peer}: {reason}")
        connection.close()

    def _close_listener(self) -> None:
        """Stop listening now: connection attempts are refused from here on. (Linux
        stops a listener on shutdown; a close alone waits for the accept in progress.)"""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    # -- the worker ----------------------------------------------------------------------
    def _run(self) -> None:
        """Start the worker once all three connections are in, then wait for it.

        This thread is the worker's parent for PR_SET_PDEATHSIG, so it must outlive it.
        """
        with self._changed:
            while len(self._connections) < len(ROLES) and not self._closed:
                self._changed.wait(0.5)
            if len(self._connections) < len(ROLES):
                log.warning("snakepit-ray: the host did not connect in time; giving up")
                for connection in self._connections.values():
                    connection.close()
                return
        control = self._connections[b"c"]
        stderr = self._connections[b"e"]
        wire = self._connections[b"w"]
        for connection in (control, stderr, wire):
            connection.settimeout(None)  # blocking, as a worker expects its stdio
        wire.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        env = {**os.environ, **self._env, "SNAKEPIT_HOST_PID": str(os.getpid()),
               "PYTHONUNBUFFERED": "1"}
        try:
            process = subprocess.Popen(self._argv, stdin=wire.fileno(), stdout=wire.fileno(),
                                       stderr=stderr.fileno(), env=env, cwd=self._cwd,
                                       start_new_session=True, close_fds=True)
        except OSError as exc:
            message = f"cannot start worker {self._argv!r} on {self._node_ip}: {exc}".encode()
            with contextlib.suppress(OSError):
                control.sendall(FAILED + struct.pack("!I", len(message)) + message)
            for connection in (control, stderr, wire):
                connection.close()
            return
        finally:
            # the worker holds its own copies now; the host sees their end when it exits
            wire.close()
            stderr.close()
        self._pid = process.pid
        with contextlib.suppress(OSError):
            control.sendall(STARTED + struct.pack("!q", process.pid))
        threading.Thread(target=self._obey, args=(control,), name="snakepit-control",
                         daemon=True).start()
        # Exited but not yet reaped, the leader keeps its pid -- the group id -- so the
        # group's leftovers (a handler's children) can be killed without risk.
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        with self._group_lock:
            self._signal(signal.SIGKILL)
            status = process.wait()
            self._reaped = True
        with contextlib.suppress(OSError):
            control.sendall(EXITED + struct.pack("!q", status))
        with contextlib.suppress(OSError):
            control.shutdown(socket.SHUT_RDWR)
        control.close()

    def _signal(self, signum: int) -> None:
        if self._pid is not None and not self._reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, signum)

    def _obey(self, control: socket.socket) -> None:
        """Signals the host asks for; the end of the channel kills the worker's group."""
        while True:
            try:
                request = control.recv(2)
            except OSError:
                request = b""
            if len(request) == 1:
                with contextlib.suppress(OSError):
                    request += control.recv(1)
            if len(request) < 2 or request[:1] != SIGNAL:
                break
            with self._group_lock:
                self._signal(request[1])
        with self._group_lock:
            self._signal(signal.SIGKILL)
