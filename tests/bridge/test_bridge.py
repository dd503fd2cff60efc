"""The worker-side bridge, driven over real pipes by a plain blocking client."""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from snakepit.bridge import CommandHandler, command
from tests.conftest import open_gate

SRC = str(Path(__file__).resolve().parents[2] / "src")


class Client:
    """A blocking wire client around one bridge process."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 codec: str = "msgpack") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snakepit.bridge", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.codec = codec
        self.send_raw(json.dumps({"t": "hello", "version": 1, "codecs": [codec],
                                  "max_frame_size": 1 << 20, "worker_id": "t"}).encode())
        self.welcome = json.loads(self.recv_raw())

    def send_raw(self, payload: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(struct.pack(">I", len(payload)) + payload)
        self.proc.stdin.flush()

    def _read_exact(self, size: int, timeout: float) -> bytes:
        # os.read on the fd, never the buffered file: select must see every byte
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = b""
        while len(data) < size:
            ready, _, _ = select.select([fd], [], [], timeout)
            assert ready, f"no frame from the bridge within {timeout}s"
            more = os.read(fd, size - len(data))
            assert more, "bridge closed the wire"
            data += more
        return data

    def recv_raw(self, timeout: float = 30.0) -> bytes:
        """One frame's payload; fails (never hangs) when none comes within ``timeout``."""
        header = self._read_exact(4, timeout)
        return self._read_exact(struct.unpack(">I", header)[0], timeout)

    def send(self, message: dict[str, Any]) -> None:
        dump = msgpack.packb if self.codec == "msgpack" else lambda m: json.dumps(m).encode()
        self.send_raw(dump(message))

    def recv(self) -> dict[str, Any]:
        raw = self.recv_raw()
        return msgpack.unpackb(raw) if self.codec == "msgpack" else json.loads(raw)

    def call(self, cmd: str, args: Any = None, call_id: int = 1, **extra: Any) -> dict[str, Any]:
        self.send({"t": "call", "id": call_id, "cmd": cmd, "args": args, **extra})
        return self.recv()

    def close(self) -> tuple[int, str]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(10)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read().decode()


@pytest.fixture
def client() -> Iterator[Client]:
    c = Client("--handler", "snakepit.testing:ChaosHandler")
    yield c
    if c.proc.poll() is None:
        c.proc.kill()
    c.proc.wait()


def test_a_call_sent_with_the_hello_is_served() -> None:
    """A client may pipeline its first call behind the hello: both arrive in one read."""
    proc = subprocess.Popen([sys.executable, "-m", "snakepit.bridge"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    hello = json.dumps({"t": "hello", "version": 1, "codecs": ["json"],
                        "max_frame_size": 1 << 20, "worker_id": "t"}).encode()
    call = json.dumps({"t": "call", "id": 1, "cmd": "echo", "args": "early"}).encode()
    stdout, _ = proc.communicate(b"".join(struct.pack(">I", len(m)) + m for m in (hello, call)),
                                 timeout=30)  # then EOF
    assert proc.returncode == 0
    frames = []
    while stdout:
        size = struct.unpack(">I", stdout[:4])[0]
        frames.append(json.loads(stdout[4:4 + size]))
        stdout = stdout[4 + size:]
    assert frames[0]["t"] == "welcome"
    assert frames[1] == {"t": "result", "id": 1, "value": "early"}


def test_importing_the_bridge_pulls_in_neither_trio_nor_attrs() -> None:
    code = ("import sys, snakepit.bridge, snakepit.testing; "
            "print(sorted(m for m in ('trio', 'attrs', 'cattrs', 'outcome', 'trio_util') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_welcome_reports_version_pid_codec_and_capabilities(client: Client) -> None:
    welcome = client.welcome
    assert welcome["t"] == "welcome" and welcome["version"] == 1
    assert welcome["pid"] == client.proc.pid
    assert welcome["codec"] == "msgpack"
    assert welcome["concurrency"] == 1
    assert {"streams", "cancel", "deadline"} <= set(welcome["capabilities"])
    assert welcome["handler"] == "snakepit.testing:ChaosHandler"


def test_builtins_and_errors(client: Client) -> None:
    assert client.call("echo", {"a": [1, 2]}) == {"t": "result", "id": 1, "value": {"a": [1, 2]}}
    assert client.call("compute", {"op": "pow", "a": 2, "b": 10})["value"] == 1024
    info = client.call("info")["value"]
    assert info["pid"] == client.proc.pid and info["calls_served"] == 2
    unknown = client.call("frobnicate", call_id=9)
    assert unknown["kind"] == "unknown_command" and unknown["id"] == 9
    failed = client.call("raise", {"message": "nope"})
    assert failed["kind"] == "handler" and failed["etype"] == "ValueError"
    assert failed["msg"] == "nope" and "Traceback" in failed["tb"]
    assert client.call("ping")["value"]["pong"] is True  # still serving


def test_stdin_eof_exits_cleanly(client: Client) -> None:
    code, stderr = client.close()
    assert code == 0
    assert "Traceback" not in stderr


@pytest.mark.parametrize("mode", ["serial", "threaded"])
@pytest.mark.parametrize("waiting", ["stream_for_credit", "wait_cancelled"])
def test_stdin_eof_mid_call_cancels_the_calls_and_exits(
        mode: str, waiting: str, tmp_path: Path) -> None:
    """The host goes away while a call waits on the host (a stream for credit, a handler
    in ctx.wait_cancelled), and a second call waits too (queued behind it in serial
    mode, running beside it in threaded mode): the worker cancels and wakes both, and
    exits 0 -- without spinning or hanging."""
    from tests.conftest import support_env

    handler = ("snakepit.testing:ChaosHandler" if mode == "serial"
               else "barrier_handler:ThreadedChaosHandler")
    c = Client("--handler", handler, env=support_env())
    marker = tmp_path / "closed"
    if waiting == "stream_for_credit":
        c.send({"t": "call", "id": 1, "cmd": "count", "window": 2,
                "args": {"n": 100, "marker": str(marker)}})
        assert [c.recv()["value"] for _ in range(2)] == [0, 1]  # then it waits for credit
    else:
        c.send({"t": "call", "id": 1, "cmd": "nap", "args": {"seconds": 3600}})
        assert c.recv()["t"] == "progress"  # in ctx.wait_cancelled
    c.send({"t": "call", "id": 2, "cmd": "block_until",
            "args": {"path": str(tmp_path / "never"), "cooperative": True}})
    try:
        code, stderr = c.close()  # EOF; close() waits at most 10 s for the exit
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()
    assert code == 0
    assert "Traceback" not in stderr
    if waiting == "stream_for_credit":
        assert marker.exists()  # the generator was closed, its finally ran


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_exit_cleanly_even_mid_call(client: Client, signum: int) -> None:
    client.send({"t": "call", "id": 1, "cmd": "sleep", "args": {"seconds": 30}})
    assert client.recv()["t"] == "progress"  # the handler is running
    client.proc.send_signal(signum)
    assert client.proc.wait(10) == 0
    assert client.proc.stderr is not None
    assert "Traceback" not in client.proc.stderr.read().decode()


def test_sigterm_stops_a_threaded_worker_s_cooperative_calls() -> None:
    """In threaded mode the signal lands in the main thread while handler threads run:
    they are cancelled, so the worker exits at once instead of waiting for them."""
    from tests.conftest import support_env

    c = Client("--handler", "barrier_handler:ThreadedChaosHandler", env=support_env())
    try:
        c.send({"t": "call", "id": 1, "cmd": "nap", "args": {"seconds": 3600}})
        assert c.recv()["t"] == "progress"
        c.proc.send_signal(signal.SIGTERM)
        assert c.proc.wait(10) == 0
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()


def test_host_gone_is_not_a_traceback_spew(client: Client) -> None:
    client.send({"t": "call", "id": 1, "cmd": "big", "args": {"size": 1 << 16}})
    assert client.proc.stdout is not None
    client.proc.stdout.close()  # the host stops reading: the answer hits a broken pipe
    code, stderr = client.close()
    assert code == 0
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_shutdown_frame_finishes_queued_work_then_exits(client: Client) -> None:
    client.send({"t": "call", "id": 1, "cmd": "echo", "args": "first"})
    client.send({"t": "shutdown"})
    assert client.recv()["value"] == "first"
    assert client.proc.wait(10) == 0


def test_malformed_frame_from_host_is_reported_and_exits(client: Client) -> None:
    client.send_raw(b"\xc1 definitely not msgpack")
    error = client.recv()
    assert error["t"] == "error" and error["kind"] == "protocol" and error["id"] is None
    assert client.proc.wait(10) == 2


@pytest.mark.parametrize("frame", [
    {"t": "cancel", "id": [1]},
    {"t": "credit", "id": 1, "n": -5},
    {"t": "credit", "id": 1, "n": "7"},
    {"t": "ping", "id": {"a": 1}},
    {"t": "drop", "sid": 3},
    {"t": "call", "id": 1, "cmd": "echo", "dl": "soon"},
    {"t": "call", "id": 1, "cmd": "echo", "dl": float("nan")},
    {"t": "call", "id": 1, "cmd": "echo", "window": 0},
    {"t": "call", "id": 1, "cmd": "echo", "sid": 5},
    {"t": "call", "id": True, "cmd": "echo"},
    {"t": "hello", "version": 1},
], ids=lambda frame: f"{frame['t']}-{'-'.join(sorted(frame)[:-1])}")
def test_malformed_control_frame_is_a_protocol_error(client: Client,
                                                     frame: dict[str, Any]) -> None:
    client.send(frame)
    error = client.recv()
    assert error["t"] == "error" and error["kind"] == "protocol" and error["id"] is None
    assert client.proc.wait(10) == 2
    assert client.proc.stderr is not None
    stderr = client.proc.stderr.read().decode()
    assert "protocol error from host" in stderr and "Traceback" not in stderr


def test_a_reused_call_id_is_a_protocol_error(client: Client, tmp_path: Path) -> None:
    client.send({"t": "call", "id": 1, "cmd": "block_until",
                 "args": {"path": str(tmp_path / "gate"), "cooperative": True}})
    assert client.recv()["t"] == "progress"
    client.send({"t": "call", "id": 1, "cmd": "echo"})
    # the running call learns of it first: the host is unusable, so it is cancelled
    cancelled = client.recv()
    assert cancelled["id"] == 1 and cancelled["kind"] == "cancelled"
    assert client.recv()["kind"] == "protocol"
    assert client.proc.wait(10) == 2


def test_oversized_frame_from_host_is_a_protocol_error(client: Client) -> None:
    assert client.proc.stdin is not None
    client.proc.stdin.write(struct.pack(">I", (1 << 20) + 1))  # over the hello's limit
    client.proc.stdin.flush()
    error = client.recv()
    assert error["kind"] == "protocol" and "over max_frame_size 1048576" in error["msg"]
    assert client.proc.wait(10) == 2


def test_expired_request_is_refused_without_running(client: Client) -> None:
    import time

    answer = client.call("crash", None, dl=time.time() - 1)
    assert answer["kind"] == "expired"
    assert client.call("ping")["t"] == "result"  # crash never ran


def test_cancel_before_start_means_never_run(client: Client, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    client.send({"t": "call", "id": 1, "cmd": "block_until", "args": {"path": str(gate)}})
    assert client.recv()["t"] == "progress"  # running, and not looking at the wire
    client.send({"t": "call", "id": 2, "cmd": "crash", "args": None})
    client.send({"t": "cancel", "id": 2})
    open_gate(gate)
    assert client.recv() == {"t": "result", "id": 1, "value": "done"}
    refused = client.recv()  # the cancel is read before the queued call would start
    assert refused["id"] == 2 and refused["kind"] == "cancelled"
    assert "before it started" in refused["msg"]
    assert client.call("ping", call_id=3)["t"] == "result"  # crash never ran


def test_cancel_of_a_queued_call_is_answered_at_once_while_a_cooperative_call_runs(
        client: Client, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    client.send({"t": "call", "id": 1, "cmd": "block_until",
                 "args": {"path": str(gate), "cooperative": True}})
    assert client.recv()["t"] == "progress"
    client.send({"t": "call", "id": 2, "cmd": "crash", "args": None})
    client.send({"t": "cancel", "id": 2})
    refused = client.recv()  # while call 1 still runs: it looks at the wire
    assert refused["id"] == 2 and refused["kind"] == "cancelled"
    open_gate(gate)
    assert client.recv() == {"t": "result", "id": 1, "value": "done"}
    assert client.call("ping", call_id=3)["t"] == "result"


def test_threaded_bridge_answers_a_cancel_of_a_queued_call_at_once(tmp_path: Path) -> None:
    from tests.conftest import support_env

    gate = tmp_path / "gate"
    c = Client("--handler", "barrier_handler:ThreadedChaosHandler", env=support_env())
    try:
        assert c.welcome["concurrency"] == 4
        for call_id in range(1, 5):  # every thread stuck
            c.send({"t": "call", "id": call_id, "cmd": "block_until",
                    "args": {"path": str(gate)}})
        assert [c.recv()["t"] for _ in range(4)] == ["progress"] * 4
        c.send({"t": "call", "id": 5, "cmd": "crash", "args": None})
        c.send({"t": "cancel", "id": 5})
        refused = c.recv()
        assert refused["id"] == 5 and refused["kind"] == "cancelled"
        open_gate(gate)
        assert sorted(c.recv()["id"] for _ in range(4)) == [1, 2, 3, 4]
        assert c.call("ping", call_id=6)["t"] == "result"  # crash never ran
    finally:
        assert c.close()[0] == 0


def test_a_call_whose_deadline_passes_while_it_waits_never_starts(
        client: Client, tmp_path: Path) -> None:
    import time

    gate = tmp_path / "gate"
    client.send({"t": "call", "id": 1, "cmd": "block_until", "args": {"path": str(gate)}})
    assert client.recv()["t"] == "progress"
    deadline = time.time() + 0.05
    client.send({"t": "call", "id": 2, "cmd": "crash", "args": None, "dl": deadline})
    while time.time() <= deadline:  # the condition under test: its deadline passes
        time.sleep(0.01)
    open_gate(gate)
    assert client.recv()["id"] == 1
    refused = client.recv()
    assert refused["id"] == 2 and refused["kind"] == "expired"
    assert client.call("ping", call_id=3)["t"] == "result"  # crash never ran


def test_json_mode_works_without_msgpack(tmp_path: Path) -> None:
    (tmp_path / "msgpack.py").write_text("raise ImportError('no msgpack in this venv')\n")
    c = Client(env={"PYTHONPATH": os.pathsep.join([str(tmp_path), SRC])}, codec="json")
    try:
        assert c.welcome["codec"] == "json"
        assert c.call("echo", {"x": "ü"}) == {"t": "result", "id": 1, "value": {"x": "ü"}}
    finally:
        assert c.close()[0] == 0


def test_bad_handler_spec_exits_with_a_message() -> None:
    proc = subprocess.run([sys.executable, "-m", "snakepit.bridge", "--handler", "json:dumps"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert proc.returncode == 3
    assert "not a snakepit.bridge.CommandHandler subclass" in proc.stderr


class Registered(CommandHandler):
    @command("add-numbers")
    def add(self, args: dict[str, int]) -> int:
        return args["a"] + args["b"]

    @command
    def no_args(self) -> str:
        return "none"

    @command
    def with_ctx(self, args: Any, ctx: Any) -> str:
        return ctx.command


def test_commands_register_by_decorator_or_method() -> None:
    handler = Registered()
    handler.register("double", lambda args: args * 2)
    names = handler.command_names()
    assert {"add-numbers", "no_args", "with_ctx", "double", "ping", "echo"} <= set(names)
    add = handler.lookup("add-numbers")
    assert add is not None and add({"a": 1, "b": 2}, None) == 3  # type: ignore[arg-type]
    assert handler.lookup("no_args")(None, None) == "none"  # type: ignore[arg-type,misc]
    assert handler.lookup("double")(21, None) == 42  # type: ignore[arg-type,misc]
    assert handler.lookup("nope") is None


def test_withdraw_of_a_queued_call_gives_it_back_unrun(client: Client, tmp_path: Path) -> None:
    assert "withdraw" in client.welcome["capabilities"]
    gate = tmp_path / "gate"
    client.send({"t": "call", "id": 1, "cmd": "block_until", "args": {"path": str(gate)}})
    assert client.recv()["t"] == "progress"  # running, and not looking at the wire
    client.send({"t": "call", "id": 2, "cmd": "crash", "args": None})
    client.send({"t": "withdraw", "id": 2})
    open_gate(gate)
    assert client.recv() == {"t": "result", "id": 1, "value": "done"}
    # read before the queued call would start: given back, never run
    assert client.recv() == {"t": "withdrawn", "id": 2}
    assert client.call("ping", call_id=3)["t"] == "result"  # crash never ran


def test_withdraw_is_answered_at_once_while_a_cooperative_call_runs(
        client: Client, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    client.send({"t": "call", "id": 1, "cmd": "block_until",
                 "args": {"path": str(gate), "cooperative": True}})
    assert client.recv()["t"] == "progress"
    client.send({"t": "call", "id": 2, "cmd": "crash", "args": None})
    client.send({"t": "withdraw", "id": 2})
    assert client.recv() == {"t": "withdrawn", "id": 2}  # while call 1 still runs
    open_gate(gate)
    assert client.recv() == {"t": "result", "id": 1, "value": "done"}


def test_withdraw_of_a_call_that_ran_is_ignored(client: Client) -> None:
    assert client.call("echo", 7, call_id=1)["value"] == 7
    client.send({"t": "withdraw", "id": 1})  # too late: its answer already went
    client.send({"t": "withdraw", "id": 99})  # never sent: nothing to give back
    answer = client.call("ping", call_id=2)  # the very next frame is ping's answer
    assert answer["t"] == "result" and answer["id"] == 2 and answer["value"]["pong"] is True
