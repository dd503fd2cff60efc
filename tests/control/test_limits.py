"""The control socket bounds what clients can hold: connections, and idle time."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing

import snakepit
from snakepit.control.client import ControlClient, ControlError
from snakepit.control.server import IDLE_TIMEOUT, MAX_CONNECTIONS, control_limits
from snakepit.process.registry import live_runs
from snakepit.protocol.framing import FrameDecoder, encode_frame


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short directory: Unix socket paths are limited to 107 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="sp-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def socket_path(state_dir: Path) -> str:
    (run,) = live_runs(state_dir)
    ((path, _),) = run.endpoints
    return path


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def connect(path: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(path)
    return sock


async def read_answer(sock: trio.socket.SocketType) -> dict[str, object] | None:
    """The next answer on ``sock``, or None when the server closed it first."""
    decoder = FrameDecoder(1 << 20)
    while data := await sock.recv(1 << 16):
        for payload in decoder.feed(data):
            answer: dict[str, object] = msgpack.unpackb(payload)
            return answer
    return None


async def hello(sock: trio.socket.SocketType) -> dict[str, object] | None:
    """Ask ``hello``; the answer, or None when the server closed the connection. A
    refusal may come before the request is sent: it is read all the same."""
    with contextlib.suppress(BrokenPipeError):
        await sock.send(encode_frame(msgpack.packb({"op": "hello"}), 1 << 20))
    return await read_answer(sock)


def test_the_defaults_are_documented_and_overridable(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    assert control_limits() == (MAX_CONNECTIONS, IDLE_TIMEOUT) == (32, 30.0)
    operators = (Path(__file__).parents[2] / "docs" / "operators.md").read_text()
    assert "`SNAKEPIT_CONTROL_MAX_CONNECTIONS` (default 32)" in operators
    assert "`SNAKEPIT_CONTROL_IDLE_TIMEOUT` (default 30 seconds)" in operators
    monkeypatch.setenv("SNAKEPIT_CONTROL_MAX_CONNECTIONS", "5")
    monkeypatch.setenv("SNAKEPIT_CONTROL_IDLE_TIMEOUT", "2.5")
    assert control_limits() == (5, 2.5)
    monkeypatch.setenv("SNAKEPIT_CONTROL_MAX_CONNECTIONS", "0")
    monkeypatch.setenv("SNAKEPIT_CONTROL_IDLE_TIMEOUT", "inf")
    with caplog.at_level(logging.WARNING, logger="snakepit.control"):
        assert control_limits() == (32, 30.0)
    assert "ignoring SNAKEPIT_CONTROL_MAX_CONNECTIONS='0'" in caplog.text
    assert "ignoring SNAKEPIT_CONTROL_IDLE_TIMEOUT='inf'" in caplog.text


async def test_connections_past_the_cap_are_refused_and_cost_no_fds(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cap, extra = 8, 1000
    monkeypatch.setenv("SNAKEPIT_CONTROL_MAX_CONNECTIONS", str(cap))
    async with snakepit.open_pool(size=1, state_dir=str(state_dir)):
        path = socket_path(state_dir)
        baseline = open_fds()
        held = [await connect(path) for _ in range(cap)]
        with trio.fail_after(30):
            for sock in held:  # each is served: the cap is not lower than said
                answer = await hello(sock)
                assert answer is not None and answer["ok"] is True
            refused = []
            for _ in range(extra):
                sock = await connect(path)
                refused.append(sock)
                answer = await read_answer(sock)
                assert answer == {"ok": False, "error": {
                    "type": "Busy",
                    "message": f"too many control connections are open ({cap}, the most); "
                               "try again"}}
                assert await read_answer(sock) is None  # and closed
        # the host holds its listener and `cap` connections; the test holds the rest
        assert open_fds() - baseline == cap + cap + extra
        for sock in refused:
            sock.close()
        # the CLI's client says what happened
        with pytest.raises(ControlError) as info:
            await trio.to_thread.run_sync(lambda: ControlClient(path).request("hello"))
        assert info.value.kind == "Busy"
        # a client that leaves frees its place
        held.pop().close()
        with trio.fail_after(30):
            while True:
                sock = await connect(path)
                answer = await hello(sock)
                assert answer is not None
                if answer["ok"] is True:
                    break
                sock.close()  # refused: the server had not read the EOF yet
                await trio.testing.wait_all_tasks_blocked()
            held.append(sock)
        for sock in held:
            sock.close()


async def test_idle_connections_are_closed(state_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    idle = 0.5
    monkeypatch.setenv("SNAKEPIT_CONTROL_IDLE_TIMEOUT", str(idle))
    async with snakepit.open_pool(size=1, state_dir=str(state_dir)):
        path = socket_path(state_dir)
        silent, trickling, busy = [await connect(path) for _ in range(3)]
        started = trio.current_time()
        # one that sends a request a byte at a time never completes one: idle
        frame = encode_frame(msgpack.packb({"op": "hello"}), 1 << 20)
        await trickling.send(frame[:1])
        with trio.fail_after(idle * 20):
            # a client that keeps asking is never idle, however long it stays
            for byte in range(1, 5):
                answer = await hello(busy)
                assert answer is not None and answer["ok"] is True
                await trickling.send(frame[byte:byte + 1])
                await trio.sleep(idle / 5)
            assert await read_answer(silent) is None
            assert await read_answer(trickling) is None
        assert trio.current_time() - started >= idle
        answer = await hello(busy)  # still served: its clock restarted with each answer
        assert answer is not None and answer["ok"] is True
        for sock in (silent, trickling, busy):
            sock.close()
