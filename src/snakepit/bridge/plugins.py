"""Worker-side plugin discovery (standard library only).

The value walk (``encode_value``, ``decode_value``, :class:`Unencodable`) lives in
:mod:`snakepit.bridge.values` and is re-exported here, where plugins have always
imported it from.
"""

from __future__ import annotations

import importlib.metadata
import sys

from snakepit.bridge.arrays import BUILTIN_SERIALIZERS
from snakepit.bridge.hookspecs import Serializer
from snakepit.bridge.values import (
    Unencodable,
    decode_tagged,
    decode_value,
    encode_fields,
    encode_value,
    is_tagged,
)

__all__ = ["GROUP", "Unencodable", "decode_tagged", "decode_value", "encode_fields",
           "encode_value", "is_tagged", "load_serializers"]

GROUP = "snakepit.serializers"


def load_serializers() -> list[Serializer]:
    """Serializers of every installed ``snakepit.serializers`` entry point.

    A plugin that fails to load is reported on stderr (which the host logs) and
    skipped: it never takes the worker down. snakepit's own serializers
    (:data:`snakepit.bridge.arrays.BUILTIN_SERIALIZERS`: numpy) come last, so a
    plugin may claim such a value first.
    """
    found: list[Serializer] = []
    for entry_point in importlib.metadata.entry_points(group=GROUP):
        try:
            provided = entry_point.load()
            found.extend(getattr(provided, "SERIALIZERS", provided))
        except Exception as exc:
            sys.stderr.write(f"snakepit.bridge: serializer plugin {entry_point.name!r} "
                             f"({entry_point.value}) failed to load: {exc!r}\n")
    return found + [s for s in BUILTIN_SERIALIZERS if s.name not in {f.name for f in found}]
