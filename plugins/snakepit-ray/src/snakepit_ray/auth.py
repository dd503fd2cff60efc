"""The handshake that opens every connection to a worker's actor (standard library only).

Before any snakepit frame, each side proves it holds the pool's secret, which the host
handed the actor through Ray. The actor speaks first, so nothing a stranger sends is
ever passed on::

    actor -> host   MAGIC, server nonce (32 random bytes)
    host  -> actor  role (1 byte), client nonce (32), HMAC-SHA256(secret, "client" ...)
    actor -> host   HMAC-SHA256(secret, "server" ...)

Both MACs cover the magic, the role and both nonces, so a recorded exchange replays
nowhere. An actor that gets a bad MAC, an unknown role or nothing in time closes the
connection and logs it; the host checks the actor's MAC too, so it never talks to an
impostor that took the port. The stream is authenticated, not encrypted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket

MAGIC = b"snakepit-ray/1\n"
NONCE_SIZE = 32
MAC_SIZE = 32
ROLES = {b"c": "control", b"e": "stderr", b"w": "wire"}
"""What a connection becomes: the actor's control channel, or the worker's stderr or wire."""


class AuthError(Exception):
    """The peer did not prove the secret (or broke the handshake)."""


def mac(secret: bytes, side: bytes, role: bytes, server_nonce: bytes,
        client_nonce: bytes) -> bytes:
    return hmac.new(secret, MAGIC + side + role + server_nonce + client_nonce,
                    hashlib.sha256).digest()


def server_greeting() -> tuple[bytes, bytes]:
    """(bytes to send first, the server nonce in them)."""
    nonce = os.urandom(NONCE_SIZE)
    return MAGIC + nonce, nonce


def client_answer(secret: bytes, role: bytes, greeting: bytes) -> tuple[bytes, bytes]:
    """The host's answer to ``greeting``: (bytes to send, the MAC the actor must return).

    Raises:
        AuthError: the greeting is not a snakepit-ray actor's.
    """
    if len(greeting) != len(MAGIC) + NONCE_SIZE or not greeting.startswith(MAGIC):
        raise AuthError("the peer is not a snakepit-ray actor (bad greeting)")
    server_nonce = greeting[len(MAGIC):]
    client_nonce = os.urandom(NONCE_SIZE)
    answer = role + client_nonce + mac(secret, b"client", role, server_nonce, client_nonce)
    return answer, mac(secret, b"server", role, server_nonce, client_nonce)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a blocking socket (its timeout applies to each recv).

    Raises:
        AuthError: the connection ended first.
    """
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AuthError("the connection ended during the handshake")
        data += chunk
    return bytes(data)


def serve_handshake(sock: socket.socket, secret: bytes) -> bytes:
    """The actor's side, on a blocking socket with a timeout. Returns the role.

    Raises:
        AuthError: bad MAC, unknown role, or the handshake ended early.
        OSError: the timeout passed (``TimeoutError``) or the connection broke.
    """
    greeting, server_nonce = server_greeting()
    sock.sendall(greeting)
    answer = recv_exactly(sock, 1 + NONCE_SIZE + MAC_SIZE)
    role, client_nonce, client_mac = answer[:1], answer[1:1 + NONCE_SIZE], answer[1 + NONCE_SIZE:]
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}")
    if not hmac.compare_digest(client_mac,
                               mac(secret, b"client", role, server_nonce, client_nonce)):
        raise AuthError("bad HMAC: the peer does not hold this pool's secret")
    sock.sendall(mac(secret, b"server", role, server_nonce, client_nonce))
    return role
