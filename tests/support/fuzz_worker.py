"""A minimal worker (standard library + msgpack) for fuzzing the host's decoder.

It completes the handshake in the codec the host offers first and answers ``echo``.
On ``emit`` it builds one answer frame from ``args`` and corrupts it as told, writes
that to the wire and exits:

- ``answer``: a map (any ``"$id"`` value becomes the call's id), encoded with the
  wire's codec and framed; or None for no frame;
- ``mutations``: ``[op, position, byte]`` triples applied to the framed bytes in order
  (``flip``: xor the byte, ``insert``, ``delete``, ``truncate``; positions wrap);
- ``tail``: raw bytes (hex under JSON) written after it.
"""

import json
import os
import struct
import sys

try:
    import msgpack
except ImportError:  # pragma: no cover
    msgpack = None


def read_exact(size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(0, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame() -> bytes | None:
    header = read_exact(4)
    if header is None:
        return None
    return read_exact(struct.unpack(">I", header)[0])


def write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def with_id(value: object, call_id: int) -> object:
    if value == "$id":
        return call_id
    if isinstance(value, dict):
        return {key: with_id(item, call_id) for key, item in value.items()}
    if isinstance(value, list):
        return [with_id(item, call_id) for item in value]
    return value


def mutate(data: bytearray, mutations: list[list[int | str]]) -> bytearray:
    for op, position, byte in mutations:
        assert isinstance(position, int) and isinstance(byte, int)
        at = position % (len(data) + 1)
        if op == "insert":
            data[at:at] = bytes([byte])
        elif not data:
            continue
        elif op == "flip":
            data[at % len(data)] ^= byte or 1
        elif op == "delete":
            del data[at % len(data)]
        elif op == "truncate":
            del data[at:]
    return data


hello = json.loads(read_frame() or b"{}")
codec = hello["codecs"][0]
write(frame(json.dumps({"t": "welcome", "version": 1, "pid": os.getpid(), "codec": codec,
                        "concurrency": 1, "capabilities": []}).encode()))
if codec == "msgpack":
    def dumps(value: object) -> bytes:
        return msgpack.packb(value, use_bin_type=True)

    def loads(payload: bytes) -> dict:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
else:
    def dumps(value: object) -> bytes:
        return json.dumps(value).encode()

    def loads(payload: bytes) -> dict:
        return json.loads(payload)

while (payload := read_frame()) is not None:
    message = loads(payload)
    if message.get("t") == "shutdown":
        break
    if message.get("t") == "ping":
        write(frame(dumps({"t": "pong", "id": message["id"]})))
    if message.get("t") != "call":
        continue
    call_id, args = message["id"], message.get("args")
    if message.get("cmd") != "emit":
        write(frame(dumps({"t": "result", "id": call_id, "value": args})))
        continue
    data = bytearray()
    if args["answer"] is not None:
        data += frame(dumps(with_id(args["answer"], call_id)))
    data = mutate(data, args["mutations"])
    tail = args["tail"]
    data += bytes.fromhex(tail) if isinstance(tail, str) else tail
    write(bytes(data))
    sys.exit(0)
