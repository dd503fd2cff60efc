"""Shared fixtures of the snakepit-node tests: ``raw`` starts worker.js under a plain
subprocess and speaks to it frame by frame, as a host would."""

from __future__ import annotations

import os
import select
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from snakepit.protocol.codecs import get_codec
from snakepit_node import ensure_node_modules


class RawWorker:
    """worker.js under subprocess, spoken to frame by frame."""

    def __init__(self, *args: str) -> None:
        js_dir = ensure_node_modules()
        self.proc = subprocess.Popen(
            [shutil.which("node") or "node", str(js_dir / "worker.js"), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.codec = get_codec("json")
        self._buffer = b""

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        payload = self.codec.encode(message)
        self.send_raw(struct.pack(">I", len(payload)) + payload)

    def read(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next frame, or None at EOF; fails the test after ``timeout``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while True:
            if len(self._buffer) >= 4:
                (size,) = struct.unpack(">I", self._buffer[:4])
                if len(self._buffer) >= 4 + size:
                    payload, self._buffer = self._buffer[4:4 + size], self._buffer[4 + size:]
                    return self.codec.decode(payload)
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise AssertionError("no frame from the worker in time")
            data = os.read(fd, 1 << 20)
            if not data:
                return None
            self._buffer += data

    def quiet(self, seconds: float) -> bool:
        """Whether no byte arrives for ``seconds``."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout.fileno()], [], [], seconds)
        return not ready and len(self._buffer) == 0

    def handshake(self, codecs: list[str] | None = None, **hello: Any) -> dict[str, Any]:
        self.send({"t": "hello", "version": 1, "codecs": codecs or ["json"],
                   "max_frame_size": 1 << 20, "worker_id": "raw-0", **hello})
        welcome = self.read()
        assert welcome is not None
        if welcome.get("t") == "welcome":
            self.codec = get_codec(welcome["codec"])
        return welcome

    def wait(self, timeout: float = 5.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def raw() -> Iterator[Callable[..., RawWorker]]:
    """Start worker.js with the given arguments; every worker started is killed after
    the test."""
    workers: list[RawWorker] = []

    def start(*args: str) -> RawWorker:
        worker = RawWorker(*args)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()
