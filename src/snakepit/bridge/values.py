"""Walking values for the wire (worker side, standard library only).

``encode_value`` walks a handler's result: plain data passes, objects a serializer
claims become tagged maps, and anything else raises :class:`Unencodable` -- the
enhanced handler keeps such values in the worker and returns a ref instead.
``decode_value`` walks the other way. Serializers that hold containers (an object
array, a model output) use the same walk for their items.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from snakepit.bridge.hookspecs import REF_KEY, TAG_KEY, Serializer

__all__ = ["Unencodable", "decode_tagged", "decode_value", "encode_fields", "encode_value",
           "is_tagged", "keeping_refs", "resolving_refs"]

_keeper: contextvars.ContextVar[Callable[[Any], Any] | None] = contextvars.ContextVar(
    "snakepit_ref_keeper", default=None)
"""While the enhanced bridge encodes a result: keeps a value in the worker's object
store and returns its ref marker (for :func:`encode_fields`)."""

_resolver: contextvars.ContextVar[Callable[[Any], Any] | None] = contextvars.ContextVar(
    "snakepit_ref_resolver", default=None)
"""While a tagged value is decoded: turns a ref marker's payload into its object (the
worker's stored object, or the host's :class:`~snakepit.Ref`)."""


@contextlib.contextmanager
def keeping_refs(keep: Callable[[Any], Any]) -> Iterator[None]:
    """Within the block, :func:`encode_fields` keeps a field that has no wire form with
    ``keep(value)`` (which returns its ref marker) instead of failing the whole value."""
    token = _keeper.set(keep)
    try:
        yield
    finally:
        _keeper.reset(token)


@contextlib.contextmanager
def resolving_refs(resolve: Callable[[Any], Any] | None) -> Iterator[None]:
    """Within the block, ref markers nested in tagged values decode through ``resolve``."""
    token = _resolver.set(resolve)
    try:
        yield
    finally:
        _resolver.reset(token)

_PLAIN = (str, int, float, bool, bytes, type(None))


class Unencodable(TypeError):
    """A value no codec and no serializer can carry."""


def encode_value(value: Any, serializers: Sequence[Serializer], depth: int = 0) -> Any:
    """``value`` as wire data, with plugin objects tagged; raises Unencodable."""
    if isinstance(value, _PLAIN):
        return value
    if depth > 64:
        raise Unencodable("value nested too deeply")
    if type(value) not in (list, tuple, dict):  # subclasses (a ModelOutput is a dict)
        for serializer in serializers:         # get their plugin's form first
            if serializer.claims(value):
                try:
                    return {TAG_KEY: serializer.name, "data": serializer.encode(value)}
                except Unencodable:
                    raise  # "keep it as a ref", not a failure
                except Exception as exc:
                    raise blame(exc, serializer, "encode", value) from None
    if isinstance(value, list | tuple):
        return [encode_value(item, serializers, depth + 1) for item in value]
    if isinstance(value, dict):
        if all(isinstance(key, str | int) for key in value):
            return {key: encode_value(item, serializers, depth + 1)
                    for key, item in value.items()}
        raise Unencodable("dict keys must be str or int")
    raise Unencodable(f"{type(value).__module__}.{type(value).__qualname__} has no "
                      "wire form")


def encode_fields(fields: dict[str, Any], serializers: Sequence[Serializer]) -> dict[str, Any]:
    """A serializer's map of fields as wire data, where a field with no wire form stays
    in the worker as a nested ref (a model output's ``past_key_values`` cache) when the
    enhanced bridge encodes a result; elsewhere such a field raises :class:`Unencodable`
    as :func:`encode_value` does. The other side decodes the marker back to the object
    (in the worker) or to a :class:`~snakepit.Ref` (on the host)."""
    keep = _keeper.get()
    encoded = {}
    for key, item in fields.items():
        try:
            encoded[key] = encode_value(item, serializers, 1)
        except Unencodable:
            if keep is None:
                raise
            encoded[key] = keep(item)
    return encoded


def is_tagged(data: Any) -> bool:
    """Whether ``data`` is a serializer's tagged map."""
    return isinstance(data, dict) and len(data) == 2 and TAG_KEY in data and "data" in data


def decode_tagged(data: dict[str, Any], serializers: Sequence[Serializer],
                  resolve_ref: Callable[[Any], Any] | None = None) -> Any:
    """The object a tagged map stands for; the map itself when no serializer of that
    name is installed here, or its framework is missing (ImportError). Ref markers
    nested in it resolve through ``resolve_ref`` (see :func:`encode_fields`)."""
    for serializer in serializers:
        if serializer.name == data[TAG_KEY]:
            try:
                if resolve_ref is None:
                    return serializer.decode(data["data"])
                with resolving_refs(resolve_ref):
                    return serializer.decode(data["data"])
            except ImportError:
                return data
            except Exception as exc:
                raise blame(exc, serializer, "decode", None) from None
    return data


def blame(exc: Exception, serializer: Serializer, doing: str, value: Any) -> Exception:
    """``exc``, raised by ``serializer``, with the serializer named at the head of its
    message: ``serializer 'pandas.DataFrame' (snakepit_pandas) failed to encode a
    DataFrame: ...``. The exception keeps its type (the host sees the plugin's own
    class as a ``RemoteError``'s ``remote_type``); only its message changes, or, for
    an exception whose message does not come from its arguments, a note is added."""
    what = f" a {type(value).__qualname__}" if value is not None else ""
    head = (f"serializer {serializer.name!r} ({type(serializer).__module__}) failed to "
            f"{doing}{what}")
    if head in str(exc):
        return exc  # named already (nested serializers of one plugin)
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{head}: {exc.args[0]}", *exc.args[1:])
    elif not exc.args:
        exc.args = (head,)
    if head not in str(exc):
        exc.add_note(head)
    return exc


def decode_value(data: Any, serializers: Sequence[Serializer],
                 resolve_ref: Any = None) -> Any:
    """Wire data back to objects: tagged maps through their serializer, ref markers
    through ``resolve_ref`` (the worker's object store), or, inside a serializer's
    ``decode``, through the resolver of the tagged value being decoded."""
    if resolve_ref is None:
        resolve_ref = _resolver.get()
    if isinstance(data, list):
        return [decode_value(item, serializers, resolve_ref) for item in data]
    if not isinstance(data, dict):
        return data
    if is_tagged(data):
        return decode_tagged(data, serializers, resolve_ref)
    if REF_KEY in data and len(data) == 1 and resolve_ref is not None:
        return resolve_ref(data[REF_KEY])
    return {key: decode_value(item, serializers, resolve_ref) for key, item in data.items()}
