"""Payload codecs: msgpack (default, binary-safe) and JSON (standard library only).

Standard library only, plus msgpack when it is importable: the bridge imports this
module in worker environments where JSON may be all there is.

Measured on the 2-core reference box (DESIGN.md): a small request and response cost
~3.8 µs with msgpack against ~15 µs with json, and 1 MiB of bytes travels as msgpack
``bin`` in 0.15 ms where JSON would need base64 (6-12 ms). Hence msgpack by default.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, Final

from snakepit.errors import PayloadError, ProtocolError

try:
    import msgpack
except ImportError:  # pragma: no cover - exercised in a worker venv without msgpack
    msgpack = None

__all__ = ["CODEC_NAMES", "MAX_DEPTH", "Codec", "available_codecs", "check_decodable",
           "get_codec", "msgpack_pack"]

CODEC_NAMES: Final = ("msgpack", "json")


MAX_DEPTH: Final = 500
"""The deepest nesting of lists and maps a JSON message may hold (msgpack's own packer
stops at 511). Python's JSON decoder recurses once per level against the interpreter's
recursion limit (1000), on top of the stack it is called from: a value that encodes on
a shallow stack could fail to decode on the peer's deeper one, and an undecodable
frame costs the peer its wire. So the sender refuses it, as a :class:`PayloadError`."""

_SCALARS: Final = frozenset({str, int, float, bool, bytes, type(None)})
_NESTED: Final = (dict, list, tuple)


def check_decodable(message: Any, *, sequence_keys: bool, max_depth: int | None) -> None:
    """Raise :class:`PayloadError` if the peer could not decode ``message`` although it
    encoded: a map key that is a list or tuple (``sequence_keys``: msgpack packs a tuple
    key as an array, which the decoder cannot hash), or nesting deeper than
    ``max_depth``.

    Called after a successful encode, so ``message`` is finite and acyclic. A frame of
    scalars is passed by a plain loop (~0.25 µs); otherwise it looks at the types of a
    container's items in one C-level pass (``set(map(type, ...))``) and descends only
    into containers: a flat list costs about as much as packing it (measured on the
    2-core box, Python 3.11).
    """
    if type(message) is dict:  # the common small frame: a call or result of scalars
        for item in message.values():  # (a loop: issuperset(map(...)) builds a set)
            if type(item) not in _SCALARS:
                break
        else:
            for item in message:
                if type(item) not in _SCALARS:
                    break
            else:
                return
    stack: list[tuple[Any, int]] = [(message, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        value, depth = pop()
        if max_depth is not None and depth > max_depth:
            raise PayloadError(f"value nested deeper than {max_depth} levels")
        if isinstance(value, dict):
            if sequence_keys:
                key_types = set(map(type, value))
                if not key_types <= _SCALARS and any(issubclass(t, tuple) for t in key_types):
                    key = next(k for k in value if isinstance(k, tuple))
                    raise PayloadError(f"map key {key!r:.80} is a tuple; msgpack sends it as "
                                       "a list, which the receiver cannot use as a key")
            items: Any = value.values()
        else:
            items = value
        if any(issubclass(t, _NESTED) for t in set(map(type, items)) - _SCALARS):
            for item in items:
                if isinstance(item, _NESTED):
                    push((item, depth + 1))


class Codec:
    """Turns wire messages (maps of plain values) into bytes and back.

    ``encode`` raises :class:`PayloadError` for values the codec cannot represent, or
    that the peer could not decode (:func:`check_decodable`); ``decode`` raises
    :class:`ProtocolError` for bytes that are not a valid map.
    """

    __slots__ = ("_dumps", "_loads", "_max_depth", "_sequence_keys", "name")

    def __init__(
        self, name: str, dumps: Callable[[Any], bytes],
        loads: Callable[[bytes | bytearray], Any], *, sequence_keys: bool = False,
        max_depth: int | None = None,
    ) -> None:
        self.name = name
        self._dumps = dumps
        self._loads = loads
        self._sequence_keys = sequence_keys
        self._max_depth = max_depth

    def encode(self, message: Any) -> bytes:
        try:
            payload = self._dumps(message)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            # RecursionError: json on a value nested ~1000 deep (msgpack says ValueError)
            raise PayloadError(f"cannot encode value with {self.name}: {exc}") from exc
        if self._sequence_keys or self._max_depth is not None:
            check_decodable(message, sequence_keys=self._sequence_keys,
                            max_depth=self._max_depth)
        return payload

    def decode(self, payload: bytes | bytearray) -> dict[str, Any]:
        try:
            message = self._loads(payload)
        except Exception as exc:  # each codec raises its own zoo of errors
            raise ProtocolError(f"undecodable {self.name} payload: {exc!r}") from exc
        if not isinstance(message, dict):
            raise ProtocolError(f"expected a map, got {type(message).__name__}")
        return message

    def __repr__(self) -> str:
        return f"<Codec {self.name}>"


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode()


JSON: Final = Codec("json", _json_dumps, json.loads, max_depth=MAX_DEPTH)

_packers = threading.local()
_PACKER_KEEPS = 1 << 20
"""A thread's ``Packer`` that packed more than this is dropped: it keeps its buffer."""


def msgpack_pack(value: Any) -> bytes:
    """``msgpack.packb(value, use_bin_type=True)`` through a ``Packer`` kept per thread:
    ``packb`` builds a new ``Packer`` each time, which cost ~0.7 µs of a small frame's
    ~1.2 µs on the reference box (~0.3 µs this way). Per thread, as a ``Packer`` fills
    its own buffer while it packs; dropped after a large frame, as that buffer stays
    as large as the largest frame it held."""
    try:
        packer = _packers.packer
    except AttributeError:
        assert msgpack is not None
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    payload: bytes = packer.pack(value)
    if len(payload) > _PACKER_KEEPS:
        del _packers.packer
    return payload


if msgpack is not None:
    _unpack_options: dict[str, Any] = {"raw": False, "strict_map_key": False}

    def _msgpack_loads(payload: bytes | bytearray) -> Any:
        return msgpack.unpackb(payload, **_unpack_options)

    MSGPACK: Codec | None = Codec("msgpack", msgpack_pack, _msgpack_loads,
                                  sequence_keys=True)
else:  # pragma: no cover
    MSGPACK = None


def available_codecs() -> list[str]:
    """Names of the codecs this interpreter can speak, most preferred first."""
    return [name for name in CODEC_NAMES if name != "msgpack" or MSGPACK is not None]


def get_codec(name: str) -> Codec:
    """Return the codec called ``name``.

    Raises:
        ValueError: unknown name, or msgpack is not installed.
    """
    if name == "json":
        return JSON
    if name == "msgpack":
        if MSGPACK is None:
            raise ValueError("the msgpack codec needs the 'msgpack' package")
        return MSGPACK
    raise ValueError(f"unknown codec {name!r}; expected one of {', '.join(CODEC_NAMES)}")
