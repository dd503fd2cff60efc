"""What a worker-side plugin provides (standard library only: no pluggy in workers).

Workers may run in environments that have nothing but msgpack, so the bridge finds
its plugins with :mod:`importlib.metadata` rather than pluggy: every entry point in the
``snakepit.serializers`` group names a module (or object) with a ``SERIALIZERS``
sequence of objects shaped like :class:`Serializer`. The host loads the same entry
points through pluggy (:mod:`snakepit.hookspecs`), so one plugin module serves both
sides, and must import neither pluggy nor snakepit's host modules at import time.

A serialized value travels as a tagged map::

    {"__snakepit__": "<serializer name>", "data": <plain data>}

which either side turns back into an object when it has a serializer of that name,
and otherwise leaves as it is.
"""

from __future__ import annotations

from typing import Any, Protocol

TAG_KEY = "__snakepit__"
REF_KEY = "__snakepit_ref__"


class Serializer(Protocol):
    """Turns one family of framework objects into plain wire data and back."""

    name: str
    """The tag on the wire, e.g. ``"pandas.DataFrame"``; unique among plugins."""

    def claims(self, value: Any) -> bool:
        """Whether this serializer encodes ``value`` (called for values that are not
        plain data: keep it cheap, e.g. an ``isinstance`` against a lazily imported
        class). Return False when the framework is not importable here."""
        ...

    def encode(self, value: Any) -> Any:
        """``value`` as plain data (maps, lists, str, int, float, bool, None, bytes).
        Large numeric data should be a buffer (``bytes``, or a ``memoryview`` of the
        value's own memory: no copy, and a large one goes through shared memory), not
        per-element lists. Raise ``snakepit.bridge.plugins.Unencodable`` for a value
        this serializer cannot carry after all: the enhanced bridge then keeps it in the
        worker as a ref. Fields with no wire form of their own can stay behind as
        nested refs: encode them with ``snakepit.bridge.plugins.encode_fields``. Any
        other exception is reported with this serializer's name."""
        ...

    def decode(self, data: Any) -> Any:
        """The object ``encode`` described. Raise ImportError when the framework is
        missing on this side; the value then stays in its tagged form."""
        ...
