"""The control endpoint of a running pool tree: a Unix socket only its owner can reach.

``serve_control`` runs inside the tree's nursery, beside the pools it reports on. It
creates ``<state_dir>/control/<run id>-<n>.sock`` with mode 0600 in a 0700 directory,
records it in the run registry (``snakepit ls`` finds it there), and also checks each
peer's credentials (``SO_PEERCRED``): a process of another user is refused and logged
even if the file modes were loosened. Requests and answers are frames of the wire
(4-byte length, msgpack maps):

==============  ================================  ======================================
``op``          arguments                         answer ``value``
==============  ================================  ======================================
``hello``                                         run id, host pid, start time, pools
``stats``       ``events_since``, ``events``      every pool's stats and recent events
``workers``                                       per pool, its workers' stats
``sessions``    ``limit``                         per pool, session count and sessions
``events``      ``since``, ``limit``              recent events (lifecycle, errors)
``recycle``     ``pool``, ``worker``, ``wait``    the retiring pid (and the new one)
``drain``       ``pool``                          the pool's calls in flight
``resume``      ``pool``
==============  ================================  ======================================

An answer is ``{"ok": true, "value": ...}`` or ``{"ok": false, "error": {"type",
"message"}}``. A misbehaving client never disturbs the pools: its connection is closed.
The server holds at most ``SNAKEPIT_CONTROL_MAX_CONNECTIONS`` connections (default
:data:`MAX_CONNECTIONS`); one more is answered ``Busy`` and closed at once. A
connection that completes no request for ``SNAKEPIT_CONTROL_IDLE_TIMEOUT`` seconds
(default :data:`IDLE_TIMEOUT`), or does not take its answer in that time, is closed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import msgpack
import trio

from snakepit import __version__
from snakepit.control.snapshot import EventLog, OperatedPool, pool_snapshot
from snakepit.errors import ConfigError, ProtocolError
from snakepit.process.registry import RunRegistry
from snakepit.process.trust import secure_dir
from snakepit.protocol.framing import FrameDecoder, encode_frame

__all__ = ["IDLE_TIMEOUT", "MAX_ANSWER", "MAX_CONNECTIONS", "MAX_REQUEST", "control_enabled",
           "control_limits", "serve_control"]

log = logging.getLogger("snakepit.control")

MAX_REQUEST = 64 * 1024
"""Largest request frame the server reads; operators send tiny maps."""
MAX_ANSWER = 16 * 1024 * 1024
"""Largest answer frame (a stats snapshot of many pools with their events)."""
MAX_CONNECTIONS = 32
"""Connections served at once (``SNAKEPIT_CONTROL_MAX_CONNECTIONS``): each CLI command
holds one for a moment, so this leaves room for many operators and monitors while a
client that opens connections in a loop costs the host at most this many fds."""
IDLE_TIMEOUT = 30.0
"""Seconds a connection may go without completing a request, or take to read an
answer, before it is closed (``SNAKEPIT_CONTROL_IDLE_TIMEOUT``). The CLI sends its
request as it connects and reads the answer at once; ``snakepit top`` reconnects for
each refresh."""
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes on Linux, NUL included
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_endpoints = itertools.count()


def control_enabled(requested: bool) -> bool:
    """Whether to serve: the config's ``control`` unless ``SNAKEPIT_CONTROL=0`` says no."""
    return requested and os.environ.get("SNAKEPIT_CONTROL", "1") not in ("0", "false", "no")


def _limit_from_env(name: str, default: float, *, integer: bool) -> float:
    """A positive number from the environment, or ``default`` (with a warning when the
    variable is set to something else)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = 0
    if not 0 < value < float("inf"):
        log.warning("ignoring %s=%r: must be a %s > 0; using %s", name, raw,
                    "whole number" if integer else "finite number", default)
        return default
    return value


def control_limits() -> tuple[int, float]:
    """``(max connections, idle timeout)`` from the environment, else the defaults."""
    return (int(_limit_from_env("SNAKEPIT_CONTROL_MAX_CONNECTIONS", MAX_CONNECTIONS,
                                integer=True)),
            _limit_from_env("SNAKEPIT_CONTROL_IDLE_TIMEOUT", IDLE_TIMEOUT, integer=False))


def control_dir(state_dir: Path) -> Path:
    """``<state_dir>/control``, created 0700; refused if another user controls it or
    the state dir (:func:`~snakepit.process.trust.secure_dir`).

    Raises:
        ConfigError: the directory belongs to another user or others may write it.
    """
    return secure_dir(secure_dir(state_dir) / "control")


def peer_uid(sock: trio.socket.SocketType) -> int:
    """The user id of the process at the other end of a Unix socket."""
    _, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                 _PEERCRED.size))
    return int(uid)


class ControlServer:
    """Answers operators about ``pools``; one per pool tree."""

    def __init__(self, pools: Mapping[str, OperatedPool], registry: RunRegistry,
                 events: EventLog, *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.pools = pools
        self.registry = registry
        self.events = events
        self.idle_timeout = idle_timeout
        self._ops: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "hello": self._hello, "stats": self._stats, "workers": self._workers,
            "sessions": self._sessions, "events": self._events, "recycle": self._recycle,
            "drain": self._drain, "resume": self._resume,
        }

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one connection until the client leaves; never raises."""
        try:
            uid = peer_uid(stream.socket)
            if uid != os.geteuid():
                log.warning("refused a control connection from uid %d (this pool runs as "
                            "uid %d)", uid, os.geteuid())
                return
            decoder = FrameDecoder(MAX_REQUEST)
            # the clock runs from the last answer, not the last byte: a client trickling
            # a request a byte at a time is idle too
            deadline = trio.current_time() + self.idle_timeout
            while True:
                with trio.move_on_at(deadline) as waiting:
                    data = await stream.receive_some()
                if waiting.cancelled_caught:
                    log.info("closed a control connection idle for %ss", self.idle_timeout)
                    return
                if not data:
                    return
                for payload in decoder.feed(data):
                    answer = await self.answer(payload)
                    with trio.move_on_after(self.idle_timeout) as sending:
                        await stream.send_all(encode_frame(msgpack.packb(answer), MAX_ANSWER))
                    if sending.cancelled_caught:
                        log.info("closed a control connection that did not read its "
                                 "answer in %ss", self.idle_timeout)
                        return
                    deadline = trio.current_time() + self.idle_timeout
        except ProtocolError as exc:
            log.warning("dropped a control client: %s", exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        except Exception:  # a bug here must never take the pools down
            log.exception("control connection failed")
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def answer(self, payload: bytes) -> dict[str, Any]:
        """The answer to one request frame."""
        try:
            request = msgpack.unpackb(payload)
        except Exception as exc:
            return _failure("ProtocolError", f"malformed request: {exc}")
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return _failure("ProtocolError", "a request is a map with an 'op' string")
        op = self._ops.get(request["op"])
        if op is None:
            return _failure("UnknownCommand", f"unknown op {request['op']!r}; known: "
                            f"{', '.join(sorted(self._ops))}")
        try:
            return {"ok": True, "value": await op(request)}
        except LookupError as exc:
            return _failure("NotFound", str(exc.args[0]) if exc.args else str(exc))
        except (TypeError, ValueError) as exc:
            return _failure("BadRequest", str(exc))

    def _pool(self, request: dict[str, Any]) -> OperatedPool:
        name = request.get("pool")
        if name is None and len(self.pools) == 1:
            return next(iter(self.pools.values()))
        if not isinstance(name, str) or name not in self.pools:
            raise LookupError(f"no pool {name!r}; pools: {', '.join(self.pools)}")
        return self.pools[name]

    def _identity(self) -> dict[str, Any]:
        return {"run_id": self.registry.run_id, "host_pid": self.registry.host_pid,
                "started": self.registry.started, "uptime": time.time() - self.registry.started,
                "version": __version__, "pools": list(self.pools)}

    async def _hello(self, request: dict[str, Any]) -> Any:
        return self._identity()

    async def _stats(self, request: dict[str, Any]) -> Any:
        return {**self._identity(),
                "pools": {name: pool_snapshot(pool) for name, pool in self.pools.items()},
                "events": self.events.since(int(request.get("events_since", 0)),
                                            int(request.get("events", 20)))}

    async def _workers(self, request: dict[str, Any]) -> Any:
        return {name: pool_snapshot(pool)["workers"] for name, pool in self.pools.items()}

    async def _sessions(self, request: dict[str, Any]) -> Any:
        limit = int(request.get("limit", 100))
        now = trio.current_time()
        return {name: {"count": len(pool.sessions),
                       "sessions": [{"id": s.id, "worker": s.worker, "mode": s.mode,
                                     "age": now - s.created_at, "idle": now - s.last_used,
                                     "ttl": s.ttl, "in_use": s.in_use}
                                    for s in pool.sessions.sessions()[:limit]]}
                for name, pool in self.pools.items()}

    async def _events(self, request: dict[str, Any]) -> Any:
        return self.events.since(int(request.get("since", 0)), int(request.get("limit", 50)))

    async def _recycle(self, request: dict[str, Any]) -> Any:
        pool = self._pool(request)
        worker = request.get("worker")
        if not isinstance(worker, str):
            raise TypeError("recycle needs 'worker', a worker id such as 'default-0'")
        try:
            old = pool.recycle(worker)
        except KeyError:
            raise LookupError(f"pool {pool.name!r} has no worker {worker!r}") from None
        if old is None:
            raise LookupError(f"worker {worker!r} takes no calls now (starting or retiring)")
        new = None
        if request.get("wait", True):
            with trio.move_on_after(pool.config.startup_timeout):
                await pool.wait_ready()  # the replacement is taking calls
            replacement = pool.slot_worker(worker)
            new = replacement.pid if replacement is not None else None
        return {"pool": pool.name, "worker": worker, "old_pid": old, "new_pid": new}

    async def _drain(self, request: dict[str, Any]) -> Any:
        pool = self._pool(request)
        pool.drain()
        return {"pool": pool.name, "draining": True, "in_flight": pool.in_flight}

    async def _resume(self, request: dict[str, Any]) -> Any:
        pool = self._pool(request)
        pool.resume()
        return {"pool": pool.name, "draining": False}


def _failure(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"type": kind, "message": message}}


_BUSY = "too many control connections are open ({}, the most); try again"


async def _refuse_busy(stream: trio.SocketStream, max_connections: int) -> None:
    """Answer ``Busy`` and close, without waiting on the client: the frame is tiny and
    goes into an empty socket buffer, or nowhere (the client is gone)."""
    frame = encode_frame(msgpack.packb(_failure("Busy", _BUSY.format(max_connections))),
                         MAX_ANSWER)
    with contextlib.suppress(OSError):
        os.write(stream.socket.fileno(), frame)  # non-blocking, like every trio socket
    with trio.CancelScope(shield=True):
        await stream.aclose()


async def serve_control(pools: Mapping[str, OperatedPool], registry: RunRegistry, events: EventLog,
                        *, task_status: trio.TaskStatus[trio.CancelScope | None]
                        = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the control socket for ``pools`` until cancelled; report its cancel scope.

    ``events`` records the pools' telemetry; the caller opens it before the pools
    start, so their start-up shows too. Started with ``nursery.start``; reports ``None``
    (and returns) when the socket cannot be made -- a pool tree works without its
    control socket, so that is logged, not raised.
    """
    try:
        directory = control_dir(registry.state_dir)
    except (OSError, ConfigError) as exc:
        log.warning("no control socket: %s", exc)
        task_status.started(None)
        return
    path = directory / f"{registry.run_id}-{next(_endpoints)}.sock"
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        log.warning("no control socket: %s is too long for a Unix socket path; set a "
                    "shorter state_dir", path)
        task_status.started(None)
        return
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a leftover of a dead run that reused this pid (ids embed pid + start)
    await sock.bind(os.fspath(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    described = [{"name": name, "size": pool.config.size} for name, pool in pools.items()]
    registry.add_endpoint(os.fspath(path), described)
    max_connections, idle_timeout = control_limits()
    try:
        with trio.CancelScope() as scope:
            server = ControlServer(pools, registry, events, idle_timeout=idle_timeout)
            task_status.started(scope)
            async with trio.open_nursery() as connections:
                open_now = 0
                warned = False

                async def serve(stream: trio.SocketStream) -> None:
                    nonlocal open_now, warned
                    try:
                        await server.handle(stream)
                    finally:
                        open_now -= 1
                        warned = warned and open_now > max_connections // 2

                while True:
                    stream = await listener.accept()
                    if open_now >= max_connections:
                        if not warned:
                            log.warning("refusing control connections: %d are open (the "
                                        "most, SNAKEPIT_CONTROL_MAX_CONNECTIONS)", open_now)
                            warned = True
                        await _refuse_busy(stream, max_connections)
                        continue
                    open_now += 1
                    connections.start_soon(serve, stream)
    finally:
        registry.remove_endpoint(os.fspath(path))
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with trio.CancelScope(shield=True):
            await listener.aclose()
