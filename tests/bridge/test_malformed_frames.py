"""Whatever the host sends, a real bridge answers or reports a protocol error, and exits
cleanly: never a traceback, never a hang."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Values that fields should not hold, beside ones they may.
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats()
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)
# What each host frame carries, and values each field may validly hold.
SCHEMAS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "call": {"id": st.integers(0, 5),
             "cmd": st.sampled_from(["echo", "ping", "info", "compute", "nope"]),
             "args": junk, "sid": st.none() | st.text(max_size=5),
             "dl": st.none() | st.floats(1e9, 3e9), "window": st.none() | st.integers(1, 4)},
    "cancel": {"id": st.integers(0, 5)},
    "credit": {"id": st.integers(0, 5), "n": st.integers(0, 4)},
    "ping": {"id": st.integers(0, 5)},
    "drop": {"sid": st.text(max_size=5)},
    "shutdown": {},
}
host_tags = st.sampled_from(sorted(SCHEMAS))


@st.composite
def control_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A host frame whose fields are each valid, missing, or of the wrong type or range;
    now and then a message type the host never sends."""
    tag = draw(host_tags | st.sampled_from(["hello", "welcome", "result", "nonsense"]) | junk)
    frame: dict[str, Any] = {"t": tag}
    for name, valid in SCHEMAS.get(tag, {}).items() if isinstance(tag, str) else ():
        choice = draw(st.sampled_from(["valid", "valid", "junk", "missing"]))
        if choice != "missing":
            frame[name] = draw(valid if choice == "valid" else junk)
    return frame


def encode(frame: Any, codec: str) -> bytes:
    if codec == "msgpack":
        return msgpack.packb(frame, use_bin_type=True)  # type: ignore[no-any-return]
    return json.dumps(frame, allow_nan=True).encode()


# Byte-level damage to an encoded frame (its header included): positions wrap.
mutations = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]),
                               st.integers(0, 300), st.integers(0, 255)),
                     min_size=1, max_size=3)


def mutate(data: bytes, damage: list[tuple[str, int, int]]) -> bytes:
    buffer = bytearray(data)
    for op, position, byte in damage:
        at = position % (len(buffer) + 1)
        if op == "insert":
            buffer[at:at] = bytes([byte])
        elif not buffer:
            continue
        elif op == "flip":
            buffer[at % len(buffer)] ^= byte or 1
        elif op == "delete":
            del buffer[at % len(buffer)]
        else:
            del buffer[at:]
    return bytes(buffer)


# One "frame" on the wire: an encoded map, raw bytes, a header claiming too much, or an
# encoded map (a call, mostly) damaged byte by byte.
wire_items = st.one_of(
    control_frames().map(lambda f: ("map", f)),
    st.binary(max_size=40).map(lambda b: ("payload", b)),
    st.just(("oversized", b"")),
    st.tuples(control_frames() | st.builds(
        lambda i, a: {"t": "call", "id": i, "cmd": "echo", "args": a},
        st.integers(0, 5), junk), mutations).map(lambda fm: ("mutated", fm)),
)


def decode_output(stdout: bytes, codec: str) -> list[dict[str, Any]]:
    frames = []
    while stdout:
        assert len(stdout) >= 4, "a truncated frame header"
        size = struct.unpack(">I", stdout[:4])[0]
        payload, stdout = stdout[4:4 + size], stdout[4 + size:]
        assert len(payload) == size, "a truncated frame"
        frames.append(msgpack.unpackb(payload) if codec == "msgpack" and frames
                      else json.loads(payload))  # the welcome is always JSON
    return frames


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True, database=None, print_blob=True)  # the same examples every run
@given(items=st.lists(wire_items, min_size=1, max_size=6))
def test_the_bridge_answers_or_reports_a_protocol_error_and_exits_cleanly(
        codec: str, items: list[tuple[str, Any]]) -> None:
    hello = json.dumps({"t": "hello", "version": 1, "codecs": [codec],
                        "max_frame_size": 1 << 16, "worker_id": "fuzz"}).encode()
    data = struct.pack(">I", len(hello)) + hello
    for kind, item in items:
        if kind == "map":
            try:
                payload = encode(item, codec)
            except (TypeError, ValueError, OverflowError):
                continue  # not representable in this codec: nothing to send
        elif kind == "payload":
            payload = item
        elif kind == "mutated":
            frame, damage = item
            try:
                payload = encode(frame, codec)
            except (TypeError, ValueError, OverflowError):
                continue
            data += mutate(struct.pack(">I", len(payload)) + payload, damage)
            continue
        else:
            data += struct.pack(">I", (1 << 16) + 1)  # over max_frame_size
            break
        data += struct.pack(">I", len(payload)) + payload
    proc = subprocess.Popen([sys.executable, "-m", "snakepit.bridge"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = proc.communicate(data, timeout=60)  # all of it, then end of input
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = stderr.decode(errors="replace")
    assert proc.returncode in (0, 2), text
    assert "Traceback" not in text
    frames = decode_output(stdout, codec)
    # (even when a header over the limit came in the very read that brought the hello:
    # the frames before a bad header are acted on first)
    assert frames[0]["t"] == "welcome"
    answers = frames[1:]
    for answer in answers:
        assert answer["t"] in {"result", "error", "chunk", "end", "progress", "pong", "beat"}
        assert answer.get("id") is None or type(answer["id"]) is int
    protocol_errors = [a for a in answers if a["t"] == "error" and a["kind"] == "protocol"]
    if proc.returncode == 2:  # reported, as the last word, and on stderr
        assert protocol_errors == [answers[-1]] and answers[-1]["id"] is None
        assert "protocol error from host" in text
    else:
        assert protocol_errors == []
