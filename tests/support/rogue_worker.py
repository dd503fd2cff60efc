"""A worker that speaks the handshake correctly and then misbehaves on the wire.

Usage: python rogue_worker.py MODE, MODE one of garbage | oversized | unknown_id |
result_then_oversized | exit.
"""

import json
import os
import struct
import sys
import time


def write_frame(payload: bytes) -> None:
    os.write(1, struct.pack(">I", len(payload)) + payload)


def read_frame() -> bytes:
    header = os.read(0, 4)
    (size,) = struct.unpack(">I", header)
    data = b""
    while len(data) < size:
        data += os.read(0, size - len(data))
    return data


mode = sys.argv[1]
hello = json.loads(read_frame())
write_frame(json.dumps({"t": "welcome", "version": 1, "pid": os.getpid(), "codec": "json",
                        "concurrency": 1}).encode())
call = json.loads(read_frame())
if mode == "garbage":
    write_frame(b"\xff\x00not json at all")
elif mode == "oversized":
    os.write(1, struct.pack(">I", hello["max_frame_size"] + 1))
elif mode == "unknown_id":
    write_frame(json.dumps({"t": "result", "id": 999999, "value": 1}).encode())
elif mode == "result_then_oversized":  # one write: a good answer, then a bad header
    answer = json.dumps({"t": "result", "id": call["id"], "value": "ok"}).encode()
    os.write(1, struct.pack(">I", len(answer)) + answer
             + struct.pack(">I", hello["max_frame_size"] + 1))
elif mode == "exit":
    sys.exit(5)
# then hang until killed
os.read(0, 1 << 20)
time.sleep(3600)
