"""The host's end of the authenticated channel to an actor: connect, prove the pool's
secret (and check the actor's proof) with :mod:`snakepit_ray.auth`, then read the
actor's report that the worker started.

The host opens three such connections per worker -- control, stderr, wire (roles
``c``, ``e``, ``w``) -- and the actor starts the worker once all three are in.
"""

from __future__ import annotations

import socket
import struct

import trio

from snakepit.errors import WorkerStartupError
from snakepit_ray import actor as actor_module
from snakepit_ray.auth import MAC_SIZE, MAGIC, NONCE_SIZE, AuthError, client_answer


async def open_channel(host: str, port: int, secret: bytes,
                       role: bytes) -> trio.socket.SocketType:
    """Connect to an actor and pass the handshake as ``role``.

    Raises:
        WorkerStartupError: the actor is not there or did not prove the secret.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await sock.connect((host, port))
        greeting = await recv_exactly(sock, len(MAGIC) + NONCE_SIZE)
        answer, expected = client_answer(secret, role, greeting)
        await sock.send(answer)  # small enough for any socket buffer
        if await recv_exactly(sock, MAC_SIZE) != expected:
            raise AuthError("the actor did not prove this pool's secret")
    except (OSError, AuthError) as exc:
        sock.close()
        raise WorkerStartupError(f"cannot open the {role.decode()} connection to the "
                                 f"actor at {host}:{port}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


async def recv_exactly(sock: trio.socket.SocketType, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await sock.recv(size - len(data))
        if not chunk:
            raise AuthError("the actor closed the connection")
        data += chunk
    return bytes(data)


async def read_started(control: trio.socket.SocketType) -> int:
    """The worker's pid, once the actor has started it.

    Raises:
        WorkerStartupError: the actor could not start it.
    """
    kind = await recv_exactly(control, 1)
    if kind == actor_module.STARTED:
        pid: int = struct.unpack("!q", await recv_exactly(control, 8))[0]
        return pid
    if kind == actor_module.FAILED:
        (size,) = struct.unpack("!I", await recv_exactly(control, 4))
        message = (await recv_exactly(control, size)).decode("utf-8", "replace")
        raise WorkerStartupError(message)
    raise AuthError(f"unexpected {kind!r} on the control connection")


__all__ = ["open_channel", "read_started", "recv_exactly"]
