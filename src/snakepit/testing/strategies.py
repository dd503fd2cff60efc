"""Hypothesis strategies for testing applications that use snakepit (needs hypothesis).

- :func:`wire_values`: values a pool carries to a worker and back *unchanged* over a
  given codec, with a given set of serializer plugins installed -- what to feed
  ``pool.execute("echo", value)``, or your own command, in a property test.
- :func:`faults` and :func:`fault_schedules`: which call suffers which fault, for
  :meth:`snakepit.testing.Faults.inject` (or the ``snakepit_pool`` fixture's
  ``inject``).
- :func:`roundtrip`: a value through the host's encoding, a codec and the worker's
  decoding, without a worker: the fast check.

hypothesis is a test dependency (``snakepit[test]``), not a runtime one: only this
module imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised without the test extra
    raise ImportError("snakepit.testing.strategies needs hypothesis: "
                      "pip install 'snakepit[test]' (or hypothesis)") from exc

from snakepit.bridge.hookspecs import REF_KEY, TAG_KEY, Serializer
from snakepit.testing.faults import FAULT_KINDS, Fault

__all__ = ["fault_schedules", "faults", "roundtrip", "wire_values"]

#: msgpack's integers: int64 and uint64.
_MSGPACK_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)


def _scalars(codec: str) -> st.SearchStrategy[Any]:
    # NaN is carried, but is never equal to itself: "unchanged" cannot be checked
    floats = st.floats(allow_nan=False)
    if codec == "msgpack":
        return st.none() | st.booleans() | _MSGPACK_INTS | floats | st.text() | st.binary()
    if codec == "json":
        # JSON has no bytes; its integers are unbounded in Python's json module
        return st.none() | st.booleans() | st.integers() | floats | st.text()
    raise ValueError(f"unknown codec {codec!r}: 'msgpack' or 'json'")


def _keys(codec: str) -> st.SearchStrategy[Any]:
    # msgpack maps keep int keys (the host decodes with strict_map_key off); JSON turns
    # every key into a string, so only str keys come back as they went
    return st.text() | _MSGPACK_INTS if codec == "msgpack" else st.text()


def _not_a_marker(value: dict[Any, Any]) -> bool:
    """Maps shaped like a serializer's tagged form or a ref marker are decoded on
    arrival, so they are not carried unchanged."""
    return TAG_KEY not in value and REF_KEY not in value


def wire_values(codec: str = "msgpack", serializers: Sequence[Serializer] = (), *,
                objects: Sequence[st.SearchStrategy[Any]] = (),
                max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Values a pool carries unchanged (``==``) over ``codec``.

    Plain data: None, bools, integers (msgpack: 64-bit), floats (no NaN), text, bytes
    (msgpack only), lists and maps (str keys; msgpack also int keys), nested. Tuples
    are left out (they arrive as lists), and so are maps shaped like a serializer's
    tagged form or a ref marker (they would be decoded into objects).

    Args:
        codec: ``"msgpack"`` or ``"json"`` (``PoolConfig.codec``).
        serializers: the serializer plugins the values travel through (the objects of
            ``snakepit.serializers`` entry points, e.g. ``snakepit_pandas.SERIALIZERS``).
        objects: strategies for framework objects those serializers carry (a
            DataFrame strategy, say); mixed in at any depth. Each serializer decides
            whether its objects compare equal after the trip.
        max_leaves: bound on the size of nested values.

    Raises:
        ValueError: unknown codec, or ``objects`` without ``serializers``.
    """
    if objects and not serializers:
        raise ValueError("objects need the serializers that carry them")
    leaves = _scalars(codec)
    if objects:
        leaves = st.one_of(leaves, *objects)
    keys = _keys(codec)
    return st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=5)
        | st.dictionaries(keys, children, max_size=5).filter(_not_a_marker),
        max_leaves=max_leaves,
    )


def roundtrip(value: Any, codec: str = "msgpack",
              serializers: Sequence[Serializer] = ()) -> Any:
    """``value`` as a worker's ``echo`` would give it back, without a worker: the
    host's encoding (serializer plugins tag their objects), the codec both ways, the
    worker's decoding and encoding, the codec again, the host's decoding.

    Raises:
        PayloadError: the codec cannot carry the value.
    """
    from snakepit.bridge.plugins import decode_value, encode_value
    from snakepit.protocol.codecs import get_codec

    wire = get_codec(codec)

    def trip(data: Any) -> Any:
        return wire.decode(wire.encode({"value": data}))["value"]

    at_worker = decode_value(trip(encode_value(value, serializers)), serializers)
    return decode_value(trip(encode_value(at_worker, serializers)), serializers)


def faults(commands: Sequence[str], kinds: Sequence[str] = FAULT_KINDS, *,
           max_seconds: float = 1.0) -> st.SearchStrategy[Fault]:
    """One :class:`~snakepit.testing.Fault`: a command of ``commands``, a kind of
    ``kinds``, and for ``slow`` a delay up to ``max_seconds``."""
    if not commands or not kinds:
        raise ValueError("faults need at least one command and one kind")
    return st.builds(Fault, command=st.sampled_from(list(commands)),
                     kind=st.sampled_from(list(kinds)),
                     seconds=st.floats(min_value=0, max_value=max_seconds,
                                       allow_nan=False, allow_infinity=False))


def fault_schedules(commands: Sequence[str], calls: int, kinds: Sequence[str] = FAULT_KINDS,
                    *, max_faults: int = 3, max_seconds: float = 1.0
                    ) -> st.SearchStrategy[dict[int, Fault]]:
    """Which of ``calls`` calls (numbered 0 .. calls-1) suffer which fault: a map
    from call number to :class:`~snakepit.testing.Fault`, at most ``max_faults`` of
    them. Arm each fault just before its call (:meth:`Faults.inject`)."""
    if calls < 0 or max_faults < 0:
        raise ValueError("calls and max_faults must be >= 0")
    if calls == 0:
        return st.just({})
    return st.dictionaries(st.integers(min_value=0, max_value=calls - 1),
                           faults(commands, kinds, max_seconds=max_seconds),
                           max_size=min(max_faults, calls))
