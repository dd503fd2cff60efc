"""worker.js under a plain subprocess, spoken to frame by frame (the ``raw`` fixture of
conftest.py): the handshake, protocol errors, ping and heartbeats, credit, sessions,
exits, payload errors and how a handler module's commands are found."""

from __future__ import annotations

import signal
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from snakepit_node import EXAMPLE_HANDLER

HANDLER = EXAMPLE_HANDLER


def test_welcome_picks_the_first_offered_codec_it_speaks(raw: Any) -> None:
    worker = raw("--handler", HANDLER)
    welcome = worker.handshake(["cbor", "msgpack", "json"])
    assert welcome["t"] == "welcome" and welcome["version"] == 1
    assert welcome["pid"] == worker.proc.pid and welcome["codec"] == "msgpack"
    assert welcome["concurrency"] == 1 and welcome["python"] == ""
    assert {"streams", "cancel", "ping", "heartbeat", "sessions"} <= set(welcome["capabilities"])
    assert welcome["handler"].endswith("example_handler.js")
    worker.send({"t": "call", "id": 1, "cmd": "echo", "args": {"b": b"\x00\xff"}})
    assert worker.read() == {"t": "result", "id": 1, "value": {"b": b"\x00\xff"}}


def test_no_common_codec_is_refused(raw: Any) -> None:
    worker = raw()
    refusal = worker.handshake(["cbor"])
    assert refusal["t"] == "error" and refusal["kind"] == "protocol" and refusal["id"] is None
    assert worker.wait() == 2


def test_an_oversized_frame_is_a_protocol_error_and_exit_2(raw: Any) -> None:
    worker = raw()
    worker.handshake(max_frame_size=1024)
    worker.send_raw(struct.pack(">I", 4096))
    error = worker.read()
    assert error is not None and error["t"] == "error"
    assert error["kind"] == "protocol" and error["id"] is None and "4096" in error["msg"]
    assert worker.wait() == 2


def test_an_undecodable_frame_is_a_protocol_error(raw: Any) -> None:
    worker = raw()
    worker.handshake()
    worker.send_raw(struct.pack(">I", 3) + b"{no")
    error = worker.read()
    assert error is not None and error["kind"] == "protocol" and error["id"] is None
    assert worker.wait() == 2


def test_ping_heartbeat_expired_and_stdout_kept_clean(raw: Any) -> None:
    worker = raw("--handler", HANDLER)
    worker.handshake(heartbeat=0.05)
    worker.send({"t": "call", "id": 1, "cmd": "slow", "args": {"seconds": 0.5}})
    worker.send({"t": "ping", "id": 2})
    seen = []
    while (frame := worker.read()) is not None and frame.get("t") != "pong":
        seen.append(frame["t"])
    assert frame == {"t": "pong", "id": 2}  # at once, while the call runs
    beats = 0
    while (frame := worker.read()) is not None and frame["t"] == "beat":
        beats += 1
    assert beats >= 3 and frame == {"t": "result", "id": 1, "value": {"slept": 0.5}}
    worker.send({"t": "call", "id": 3, "cmd": "echo", "args": 1, "dl": time.time() - 1})
    while (frame := worker.read()) is not None and frame["t"] == "beat":
        pass
    assert frame is not None and frame["kind"] == "expired" and frame["id"] == 3
    worker.send({"t": "call", "id": 4, "cmd": "greet", "args": {"name": "stderr"}})
    while (frame := worker.read()) is not None and frame["t"] == "beat":
        pass
    assert frame == {"t": "result", "id": 4, "value": "Hello, stderr!"}
    worker.send({"t": "shutdown"})
    assert worker.wait() == 0
    assert worker.proc.stderr is not None and b"greeting stderr" in worker.proc.stderr.read()


def test_credit_bounds_a_stream_and_cancel_stops_it(raw: Any) -> None:
    worker = raw("--handler", HANDLER)
    worker.handshake(["msgpack"])
    worker.send({"t": "call", "id": 1, "cmd": "count", "args": {"n": 100}, "window": 2})
    assert [worker.read(), worker.read()] == [{"t": "chunk", "id": 1, "value": 0},
                                              {"t": "chunk", "id": 1, "value": 1}]
    assert worker.quiet(0.2)  # no credit, no chunk
    worker.send({"t": "credit", "id": 1, "n": 1})
    assert worker.read() == {"t": "chunk", "id": 1, "value": 2}
    assert worker.quiet(0.1)
    worker.send({"t": "cancel", "id": 1})
    error = worker.read()
    assert error is not None and error["t"] == "error" and error["kind"] == "cancelled"
    worker.send({"t": "call", "id": 2, "cmd": "count", "args": {"n": 2}, "window": 5})
    assert [worker.read() for _ in range(3)] == [
        {"t": "chunk", "id": 2, "value": 0}, {"t": "chunk", "id": 2, "value": 1},
        {"t": "end", "id": 2}]


def test_sessions_are_dropped_on_request(raw: Any) -> None:
    worker = raw("--handler", HANDLER)
    worker.handshake()
    results = []
    for call_id in (1, 2):
        worker.send({"t": "call", "id": call_id, "cmd": "tally", "sid": "s1"})
        results.append(worker.read())
    worker.send({"t": "drop", "sid": "s1"})
    worker.send({"t": "call", "id": 3, "cmd": "tally", "sid": "s1"})
    results.append(worker.read())
    assert [r["value"] for r in results if r is not None] == [1, 2, 1]


HOLD = """'use strict';
const { setTimeout: sleep } = require('node:timers/promises');
module.exports = {
  // says that it runs, then waits (a cancel or the deadline wakes it)
  async hold(args, ctx) {
    ctx.progress(0, 1, 'holding');
    await sleep(30000, undefined, { signal: ctx.signal });
  },
};
"""


@pytest.mark.parametrize("how", ["eof", "SIGTERM", "SIGINT"])
def test_exits_cleanly_on_eof_and_signals(raw: Any, how: str, tmp_path: Path) -> None:
    handler = tmp_path / "hold.js"
    handler.write_text(HOLD)
    worker = raw("--handler", str(handler))
    worker.handshake()
    worker.send({"t": "call", "id": 1, "cmd": "hold"})
    running = worker.read(timeout=30)
    assert running is not None and running["t"] == "progress"  # the call is in flight
    if how == "eof":
        assert worker.proc.stdin is not None
        worker.proc.stdin.close()
    else:
        worker.proc.send_signal(getattr(signal, how))
    assert worker.wait() == 0


def test_shutdown_finishes_the_running_call_first(raw: Any) -> None:
    worker = raw("--handler", HANDLER)
    worker.handshake()
    worker.send({"t": "call", "id": 1, "cmd": "slow", "args": {"seconds": 0.2}})
    worker.send({"t": "shutdown"})
    assert worker.read() == {"t": "result", "id": 1, "value": {"slept": 0.2}}
    assert worker.read() is None and worker.wait() == 0


def test_an_unencodable_result_is_a_payload_error(raw: Any, tmp_path: Path) -> None:
    handler = tmp_path / "bad.mjs"
    handler.write_text("export function big() { return 10n ** 30n; }\n"
                       "export async function* bad_stream() { yield 1; yield 2n; yield 3; }\n"
                       "export const concurrency = 2;\n")
    worker = raw("--handler", str(handler))
    assert worker.handshake(["msgpack"])["concurrency"] == 2
    worker.send({"t": "call", "id": 1, "cmd": "big"})
    error = worker.read()
    assert error is not None and error["kind"] == "payload" and error["id"] == 1
    worker.send({"t": "call", "id": 2, "cmd": "bad_stream", "window": 10})
    frames = [worker.read(), worker.read()]
    assert frames[0] == {"t": "chunk", "id": 2, "value": 1}
    assert frames[1] is not None and frames[1]["kind"] == "payload"
    worker.send({"t": "call", "id": 3, "cmd": "echo", "args": "still here"})
    assert worker.read() == {"t": "result", "id": 3, "value": "still here"}
    assert worker.quiet(0.05)  # nothing more for the finished calls


def test_class_instances_and_private_names(raw: Any, tmp_path: Path) -> None:
    handler = tmp_path / "counter.js"
    handler.write_text(
        "console.log('loading'); process.stdout.write('not a frame');\n"
        "class Counter {\n"
        "  constructor() { this.n = 0; }\n"
        "  inc(args) { this.n += args.by; return this._report(); }\n"
        "  _report() { return this.n; }\n"
        "}\n"
        "module.exports = new Counter();\n")
    worker = raw("--handler", str(handler))
    worker.handshake()
    worker.send({"t": "call", "id": 1, "cmd": "inc", "args": {"by": 2}})
    worker.send({"t": "call", "id": 2, "cmd": "inc", "args": {"by": 3}})
    worker.send({"t": "call", "id": 3, "cmd": "_report"})
    worker.send({"t": "call", "id": 4, "cmd": "info"})
    frames = [worker.read() for _ in range(4)]
    assert frames[0] == {"t": "result", "id": 1, "value": 2}
    assert frames[1] == {"t": "result", "id": 2, "value": 5}
    assert frames[2] is not None and frames[2]["kind"] == "unknown_command"
    assert frames[3] is not None and "inc" in frames[3]["value"]["commands"]
    assert "_report" not in frames[3]["value"]["commands"]
