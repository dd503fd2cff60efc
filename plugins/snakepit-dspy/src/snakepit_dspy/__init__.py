"""DSPy objects across the snakepit wire.

Loaded by workers (without pluggy) and by the host through the
``snakepit.serializers`` entry point; DSPy is imported only when a value needs it.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["SERIALIZERS", "host_tool", "lm_history"]


def _dspy_class(path: str) -> Any:
    module_name, _, name = path.rpartition(".")
    module = sys.modules.get(module_name)
    return getattr(module, name, None) if module is not None else None


def _plain(value: Any) -> Any:
    """Field values as wire data (nested predictions and examples tagged); a value with
    no wire form at all travels as its repr, as DSPy prints it."""
    from snakepit.bridge.plugins import Unencodable, encode_value

    try:
        return encode_value(value, SERIALIZERS)
    except Unencodable:
        if isinstance(value, dict):
            return {str(key): _plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [_plain(item) for item in value]
        return repr(value)


def _restore(value: Any) -> Any:
    from snakepit.bridge.plugins import decode_value

    return decode_value(value, SERIALIZERS)


class PredictionSerializer:
    name = "dspy.Prediction"

    def claims(self, value: Any) -> bool:
        cls = _dspy_class("dspy.primitives.prediction.Prediction")
        return cls is not None and isinstance(value, cls)

    def encode(self, prediction: Any) -> dict[str, Any]:
        return {"fields": _plain(dict(prediction.items()))}

    def decode(self, data: dict[str, Any]) -> Any:
        import dspy

        return dspy.Prediction(**{k: _restore(v) for k, v in data["fields"].items()})


class ExampleSerializer:
    name = "dspy.Example"

    def claims(self, value: Any) -> bool:
        example = _dspy_class("dspy.primitives.example.Example")
        prediction = _dspy_class("dspy.primitives.prediction.Prediction")
        return (example is not None and isinstance(value, example)
                and not (prediction is not None and isinstance(value, prediction)))

    def encode(self, example: Any) -> dict[str, Any]:
        inputs = getattr(example, "_input_keys", None)
        return {"fields": _plain(dict(example.items())),
                "inputs": sorted(inputs) if inputs is not None else None}

    def decode(self, data: dict[str, Any]) -> Any:
        import dspy

        example = dspy.Example(**{k: _restore(v) for k, v in data["fields"].items()})
        return example.with_inputs(*data["inputs"]) if data["inputs"] is not None else example


# Field types that travel by name; a field of any other type arrives as ``str``.
_TYPES: dict[str, Any] = {name: kind for kind in (str, int, float, bool)
                          for name in (kind.__name__,)}
_TYPES.update({f"list[{name}]": list[kind] for name, kind in list(_TYPES.items())})
_TYPES.update({"dict[str, str]": dict[str, str], "dict[str, int]": dict[str, int],
               "dict[str, float]": dict[str, float], "dict[str, Any]": dict[str, Any]})
_TYPE_NAMES = {kind: name for name, kind in _TYPES.items()}  # list[str] == list[str]


def _type_name(annotation: Any) -> str | None:
    try:
        return _TYPE_NAMES.get(annotation)
    except TypeError:  # unhashable
        return None


class SignatureSerializer:
    """A Signature class: its fields in order, each with its description and (for the
    common types) its type, and the instructions. The prefix travels for information;
    DSPy 3 derives it from the field's name."""

    name = "dspy.Signature"

    def claims(self, value: Any) -> bool:
        signature = _dspy_class("dspy.signatures.signature.Signature")
        return signature is not None and isinstance(value, type) and issubclass(value, signature)

    def encode(self, signature: Any) -> dict[str, Any]:
        def fields(group: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"name": name, "desc": field.json_schema_extra.get("desc", ""),
                     "prefix": field.json_schema_extra.get("prefix", ""),
                     "type": _type_name(field.annotation)}
                    for name, field in group.items()]

        return {"signature": signature.signature, "instructions": signature.instructions,
                "inputs": fields(signature.input_fields),
                "outputs": fields(signature.output_fields)}

    def decode(self, data: dict[str, Any]) -> Any:
        import dspy

        inputs, outputs = data.get("inputs"), data.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list):
            # written by version 1: names only
            return dspy.Signature(data["signature"], data["instructions"])
        fields: dict[str, Any] = {}
        for group, make in ((inputs, dspy.InputField), (outputs, dspy.OutputField)):
            for field in group:
                kind = _TYPES.get(field.get("type") or "str", str)
                # no prefix: DSPy 3 derives it from the name (passing one is deprecated)
                fields[field["name"]] = (kind, make(desc=field["desc"]))
        return dspy.Signature(fields, data["instructions"])


def lm_history(lm: Any, last: int | None = None) -> list[dict[str, Any]]:
    """An LM's history as plain entries (call it through the enhanced bridge:
    ``await pool.call("snakepit_dspy.lm_history", lm_ref)``; allow ``snakepit_dspy``)."""
    keep = ("prompt", "messages", "outputs", "kwargs", "usage", "cost", "timestamp", "uuid",
            "model", "model_type")
    entries = lm.history if last is None else lm.history[-last:]
    return [{key: _plain(entry.get(key)) for key in keep if key in entry} for entry in entries]


SERIALIZERS = [PredictionSerializer(), ExampleSerializer(), SignatureSerializer()]


def host_tool(name: str, *, desc: str | None = None, args: dict[str, Any] | None = None,
              arg_desc: dict[str, str] | None = None) -> Any:
    """A ``dspy.Tool`` that runs the host tool ``name`` (worker side, inside a call).

    The application registers the tool in the host (``pool.register_tool``, or a
    session's ``tools``); the agent in the worker calls it like any DSPy tool, and the
    call crosses to the host through ``ctx.call_host`` under the running call's
    deadline. ``args`` is the tool's JSON schema of arguments as ``dspy.Tool`` takes it
    (``{"order_id": {"type": "integer"}}``); the host function receives them as a
    dict. ``desc`` defaults to the description the host registered.

    Raises:
        RuntimeError: outside a snakepit call (no host to ask).
        LookupError: no host tool ``name`` is reachable from the running call.
    """
    import dspy

    from snakepit.bridge.hostcalls import HostToolProxy, current_context

    if desc is None:
        ctx = current_context()
        if ctx is None:
            raise RuntimeError(f"host_tool({name!r}) needs a running snakepit call")
        listed = {tool["name"]: tool["description"] for tool in ctx.host_tools()}
        if name not in listed:
            raise LookupError(f"no host tool {name!r} is reachable from this call "
                              f"(known: {sorted(listed)})")
        desc = listed[name] or f"Host tool {name}."
    return dspy.Tool(HostToolProxy(name, desc), name=name, desc=desc, args=args or {},
                     arg_desc=arg_desc)
