"""Payload codecs: msgpack (default, binary-safe) and JSON (standard library only).

Standard library only, plus msgpack when it is importable: the bridge imports this
module in worker environments where JSON may be all there is.

Measured on the 2-core reference box (DESIGN.md): a small request and response cost
~3.8 µs with msgpack against ~15 µs with json, and 1 MiB of bytes travels as msgpack
``bin`` in 0.15 ms where JSON would need base64 (6-12 ms). Hence msgpack by default.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from snakepit.errors import PayloadError, ProtocolError

try:
    import msgpack
except ImportError:  # pragma: no cover - exercised in a worker venv without msgpack
    msgpack = None

__all__ = ["CODEC_NAMES", "Codec", "available_codecs", "get_codec"]

CODEC_NAMES: Final = ("msgpack", "json")


class Codec:
    """Turns wire messages (maps of plain values) into bytes and back.

    ``encode`` raises :class:`PayloadError` for values the codec cannot represent;
    ``decode`` raises :class:`ProtocolError` for bytes that are not a valid map.
    """

    __slots__ = ("_dumps", "_loads", "name")

    def __init__(
        self, name: str, dumps: Callable[[Any], bytes],
        loads: Callable[[bytes | bytearray], Any]
    ) -> None:
        self.name = name
        self._dumps = dumps
        self._loads = loads

    def encode(self, message: Any) -> bytes:
        try:
            return self._dumps(message)
        except (TypeError, ValueError, OverflowError) as exc:
            raise PayloadError(f"cannot encode value with {self.name}: {exc}") from exc

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


JSON: Final = Codec("json", _json_dumps, json.loads)

if msgpack is not None:
    _packer_options: dict[str, Any] = {"use_bin_type": True}
    _unpack_options: dict[str, Any] = {"raw": False, "strict_map_key": False}

    def _msgpack_dumps(value: Any) -> bytes:
        return msgpack.packb(value, **_packer_options)  # type: ignore[no-any-return]

    def _msgpack_loads(payload: bytes | bytearray) -> Any:
        return msgpack.unpackb(payload, **_unpack_options)

    MSGPACK: Codec | None = Codec("msgpack", _msgpack_dumps, _msgpack_loads)
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
