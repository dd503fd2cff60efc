"""The raw pipe floor: child processes answering length-prefixed frames, no pool at all.

What any pipe-based pool with a Python host could at best do on this machine:

- **throughput**: one host thread keeps ``depth`` requests in flight on each of the
  workers (the same pipelining snakepit does), reads every answer that arrived, decodes
  it with msgpack and sends the next requests in one write;
- **latency**: blocking round trips on one child;
- **payloads**: the bytes echoed through a pair of 1 MiB pipes, read straight into a
  buffer of the payload's size (no codec: the floor for moving bytes);
- **streams**: a child writing msgpack chunk frames as fast as it can, the host
  decoding each (offsets into one buffer, no re-slicing).
"""

from __future__ import annotations

import os
import selectors
import struct
import subprocess
import sys
import time
from typing import Any

import msgpack

from snakepit.process.launch import grow_pipe

HEADER = struct.Struct(">I")

_ECHO_CHILD = r"""
import os, struct, msgpack
header = struct.Struct(">I")
buf, start = bytearray(), 0
while True:
    data = os.read(0, 1 << 16)
    if not data:
        break
    buf += data
    out = []
    while len(buf) - start >= 4:
        (n,) = header.unpack_from(buf, start)
        if len(buf) - start < 4 + n:
            break
        msg = msgpack.unpackb(bytes(buf[start + 4:start + 4 + n]))
        start += 4 + n
        payload = msgpack.packb({"t": "result", "id": msg["id"], "value": msg["args"]})
        out.append(header.pack(len(payload)) + payload)
    if start == len(buf):
        buf.clear()
        start = 0
    if out:
        os.write(1, b"".join(out))
"""

_BLOB_CHILD = r"""
import os, struct
header = struct.Struct(">I")
def read_exactly(view):
    while view:
        n = os.readv(0, [view])
        if not n:
            raise SystemExit
        view = view[n:]
while True:
    head = bytearray(4)
    read_exactly(memoryview(head))
    (n,) = header.unpack(head)
    body = bytearray(n)
    read_exactly(memoryview(body))
    view = memoryview(head + body)
    while view:
        view = view[os.write(1, view):]
"""

_STREAM_CHILD = r"""
import os, struct, sys, msgpack
n, size = int(sys.argv[1]), int(sys.argv[2])
os.write(1, b"R")  # ready: the host starts its clock, then says go
os.read(0, 1)
blob = b"x" * size
payload = msgpack.packb({"t": "chunk", "id": 1, "value": blob})
frame = struct.pack(">I", len(payload)) + payload
batch = frame * max(1, 65536 // len(frame))
per_batch = max(1, 65536 // len(frame))
sent = 0
while sent < n:
    count = min(per_batch, n - sent)
    data = batch if count == per_batch else frame * count
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
    sent += count
"""


def _child(script: str, *args: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    grow_pipe(child.stdin.fileno())
    grow_pipe(child.stdout.fileno())
    return child


def _close(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait()


def _request(call_id: int) -> bytes:
    payload: bytes = msgpack.packb({"t": "call", "id": call_id, "cmd": "echo",
                                    "args": call_id})
    return HEADER.pack(len(payload)) + payload


def throughput(workers: int, calls: int, depth: int = 8) -> float:
    """Calls per second with ``depth`` requests in flight on each of ``workers`` children."""
    children = [_child(_ECHO_CHILD) for _ in range(workers)]
    selector = selectors.DefaultSelector()
    buffers: dict[int, bytearray] = {}
    write_fds: dict[int, int] = {}
    try:
        next_id = 0
        for child in children:  # started and warm: one round trip each
            assert child.stdin is not None and child.stdout is not None
            os.write(child.stdin.fileno(), _request(0))
            (size,) = HEADER.unpack(_read_exactly(child.stdout.fileno(), 4))
            _read_exactly(child.stdout.fileno(), size)
        for child in children:
            assert child.stdin is not None and child.stdout is not None
            fd = child.stdout.fileno()
            buffers[fd] = bytearray()
            write_fds[fd] = child.stdin.fileno()
            selector.register(fd, selectors.EVENT_READ)
            os.write(write_fds[fd], b"".join(_request(next_id + i) for i in range(depth)))
            next_id += depth
        done = 0
        start = time.perf_counter()  # the first requests are already in the pipes
        while done < calls:
            for key, _ in selector.select():
                fd = int(key.fd)
                buffer = buffers[fd]
                buffer += os.read(fd, 1 << 16)
                offset, answered = 0, 0
                while len(buffer) - offset >= 4:
                    (size,) = HEADER.unpack_from(buffer, offset)
                    if len(buffer) - offset < 4 + size:
                        break
                    with memoryview(buffer) as view:
                        msgpack.unpackb(view[offset + 4:offset + 4 + size])
                    offset += 4 + size
                    answered += 1
                del buffer[:offset]
                done += answered
                if answered:
                    os.write(write_fds[fd],
                             b"".join(_request(next_id + i) for i in range(answered)))
                    next_id += answered
        return done / (time.perf_counter() - start)
    finally:
        selector.close()
        for child in children:
            _close(child)


class Echo:
    """One echo child for blocking round trips (the sequential floor)."""

    def __init__(self) -> None:
        self._child = _child(_ECHO_CHILD)
        assert self._child.stdin is not None and self._child.stdout is not None
        self._write_fd = self._child.stdin.fileno()
        self._read_fd = self._child.stdout.fileno()
        for i in range(200):  # started and warm
            self.round_trip(i)

    def round_trip(self, call_id: int) -> None:
        os.write(self._write_fd, _request(call_id))
        (size,) = HEADER.unpack(_read_exactly(self._read_fd, 4))
        msgpack.unpackb(_read_exactly(self._read_fd, size))

    def timed(self, count: int) -> list[float]:
        """Seconds of each of ``count`` round trips."""
        samples = []
        for i in range(count):
            start = time.perf_counter()
            self.round_trip(i)
            samples.append(time.perf_counter() - start)
        return samples

    def close(self) -> None:
        _close(self._child)


def latencies(seq: int) -> list[float]:
    """Seconds of ``seq`` blocking round trips on one child (after a warm-up)."""
    echo = Echo()
    try:
        return echo.timed(seq)
    finally:
        echo.close()


def _read_exactly(fd: int, size: int) -> bytes:
    data = os.read(fd, size)
    while len(data) < size:
        more = os.read(fd, size - len(data))
        if not more:
            raise EOFError("the child exited")
        data += more
    return data


def payload_round_trip(size: int, rounds: int) -> float:
    """Seconds per echo of ``size`` bytes (the mean of ``rounds`` after one warm-up)."""
    child = _child(_BLOB_CHILD)
    assert child.stdin is not None and child.stdout is not None
    wfd, rfd = child.stdin.fileno(), child.stdout.fileno()
    blob = os.urandom(size)
    frame = HEADER.pack(size)

    def round_trip() -> None:
        view = memoryview(frame + blob)
        while view:
            view = view[os.write(wfd, view):]
        back = bytearray(4 + size)
        window = memoryview(back)
        while window:
            count = os.readv(rfd, [window])
            if not count:
                raise EOFError("the child exited")
            window = window[count:]

    try:
        round_trip()
        start = time.perf_counter()
        for _ in range(rounds):
            round_trip()
        return (time.perf_counter() - start) / rounds
    finally:
        _close(child)


def stream(chunks: int, size: int) -> dict[str, Any]:
    """A child writing ``chunks`` chunk frames of ``size`` bytes; chunks/s and MB/s."""
    child = _child(_STREAM_CHILD, str(chunks), str(size))
    assert child.stdin is not None and child.stdout is not None
    fd = child.stdout.fileno()
    buffer, offset, count, received = bytearray(), 0, 0, 0
    _read_exactly(fd, 1)
    start = time.perf_counter()
    os.write(child.stdin.fileno(), b"!")
    while data := os.read(fd, 1 << 20):
        buffer += data
        while len(buffer) - offset >= 4:
            (frame,) = HEADER.unpack_from(buffer, offset)
            if len(buffer) - offset < 4 + frame:
                break
            with memoryview(buffer) as view:
                received += len(msgpack.unpackb(view[offset + 4:offset + 4 + frame])["value"])
            offset += 4 + frame
            count += 1
        if offset > 1 << 20:
            del buffer[:offset]
            offset = 0
    elapsed = time.perf_counter() - start
    _close(child)
    assert count == chunks and received == chunks * size
    return {"chunks_per_s": chunks / elapsed, "mb_per_s": received / elapsed / 1e6}
