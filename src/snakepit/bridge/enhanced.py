"""The enhanced bridge: call any allowed Python callable, keep objects in the worker.

Serve it with ``PoolConfig(handler="snakepit.bridge.enhanced:EnhancedHandler")``; the
host side is ``pool.call(...)`` and :class:`snakepit.Ref`.

- **Dynamic calls**: ``call`` imports a dotted target (``"json.dumps"``,
  ``"dspy.Predict"``) and calls it. Only targets under an allowed module prefix may be
  called -- calling arbitrary code is a security decision, so the host passes the
  pool's ``allowed_targets`` in ``SNAKEPIT_ALLOWED_TARGETS``.
- **Graceful serialization**: a result that is not plain data and that no serializer
  plugin claims is kept in the worker's object store; a ref marker goes back instead,
  and a ref passed as an argument is resolved from the store.
- **Objects**: ``method`` and ``getattr`` on stored objects, ``store`` / ``retrieve``
  / ``delete`` / ``list`` by name, ``inspect`` for signature, doc and attributes.
- **Pipelines**: a list of steps whose results may be stored under names that later
  steps use (``{"$stored": "name"}``).

Objects live in the call's session state when it has a session (and go with it), else
in the worker's global store until deleted.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import os
from typing import Any

from snakepit.bridge.context import CallContext
from snakepit.bridge.handler import CommandHandler, command
from snakepit.bridge.hookspecs import REF_KEY, TAG_KEY
from snakepit.bridge.plugins import Unencodable, decode_value, encode_value, load_serializers
from snakepit.protocol import wire

ALLOWED_ENV = wire.ALLOWED_TARGETS_ENV
STORED_KEY = "$stored"


class TargetNotAllowed(PermissionError):
    """The dotted target is outside the pool's ``allowed_targets``."""


class RefNotFound(LookupError):
    """No object under that ref or name in this worker (and session)."""


class EnhancedHandler(CommandHandler):
    """Dynamic calls, an object store with refs, pipelines and inspection."""

    def __init__(self) -> None:
        super().__init__()
        self.serializers = load_serializers()
        allowed = os.environ.get(ALLOWED_ENV, "")
        self.allowed = tuple(prefix for prefix in allowed.split(",") if prefix)
        self.global_objects: dict[str, Any] = {}
        self._ref_ids = itertools.count(1)

    # -- the store ---------------------------------------------------------------------
    def objects(self, ctx: CallContext) -> dict[str, Any]:
        """The object store of the call's session, or the worker's global one."""
        if ctx.session_id is None:
            return self.global_objects
        store: dict[str, Any] = ctx.session.setdefault("objects", {})
        return store

    def _lookup(self, ctx: CallContext, key: str) -> Any:
        objects = self.objects(ctx)
        if key not in objects:
            where = f"session {ctx.session_id!r}" if ctx.session_id else "this worker"
            raise RefNotFound(f"no object {key!r} in {where} (deleted, or another worker's)")
        return objects[key]

    def wire(self, value: Any, ctx: CallContext, name: str | None = None) -> Any:
        """``value`` as wire data, or a ref to it kept in the store (under ``name``
        when the value is already stored under it)."""
        try:
            return encode_value(value, self.serializers)
        except Unencodable:
            ref_id = name or f"r{next(self._ref_ids)}"
            self.objects(ctx)[ref_id] = value
            kind = type(value)
            return {REF_KEY: {"id": ref_id, "type": f"{kind.__module__}.{kind.__qualname__}",
                              "repr": _short_repr(value)}}

    def unwire(self, data: Any, ctx: CallContext) -> Any:
        """Arguments from the host: tagged values decoded, refs and names resolved."""
        if isinstance(data, dict) and len(data) == 1 and STORED_KEY in data:
            return self._lookup(ctx, data[STORED_KEY])
        if isinstance(data, list):
            return [self.unwire(item, ctx) for item in data]
        if isinstance(data, dict) and REF_KEY not in data and TAG_KEY not in data:
            return {key: self.unwire(item, ctx) for key, item in data.items()}
        return decode_value(data, self.serializers, lambda ref: self._lookup(ctx, ref))

    # -- targets -----------------------------------------------------------------------
    def resolve(self, target: str) -> Any:
        """Import ``package.module.attr...``, if it is under an allowed prefix."""
        if not any(target == prefix or target.startswith(prefix + ".")
                   for prefix in self.allowed):
            raise TargetNotAllowed(
                f"{target!r} is not under allowed_targets {list(self.allowed)}")
        parts = target.split(".")
        for split in range(len(parts), 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            for attr in parts[split:]:
                obj = getattr(obj, attr)
            return obj
        raise ImportError(f"cannot import any module of {target!r}")

    def _invoke(self, fn: Any, args: Any, kwargs: Any, ctx: CallContext) -> Any:
        return fn(*self.unwire(args or [], ctx), **self.unwire(kwargs or {}, ctx))

    def _finish(self, value: Any, store_as: str | None, ctx: CallContext) -> Any:
        if store_as:
            self.objects(ctx)[store_as] = value
        return self.wire(value, ctx, store_as)

    # -- commands ------------------------------------------------------------------------
    @command("call")
    def call_target(self, args: dict[str, Any], ctx: CallContext) -> Any:
        """``{target, args?, kwargs?, store_as?}``: call a dotted callable."""
        result = self._invoke(self.resolve(args["target"]), args.get("args"),
                              args.get("kwargs"), ctx)
        return self._finish(result, args.get("store_as"), ctx)

    @command
    def method(self, args: dict[str, Any], ctx: CallContext) -> Any:
        """``{ref, name?, args?, kwargs?, store_as?}``: call a stored object (or its
        method ``name``)."""
        obj = self._lookup(ctx, args["ref"])
        name = args.get("name")
        if name is not None:
            if name.startswith("_"):
                raise AttributeError(f"private attribute {name!r} is not callable remotely")
            obj = getattr(obj, name)
        result = self._invoke(obj, args.get("args"), args.get("kwargs"), ctx)
        return self._finish(result, args.get("store_as"), ctx)

    @command("getattr")
    def get_attribute(self, args: dict[str, Any], ctx: CallContext) -> Any:
        """``{ref, name}``: an attribute of a stored object."""
        if args["name"].startswith("_"):
            raise AttributeError(f"private attribute {args['name']!r} is not readable remotely")
        return self.wire(getattr(self._lookup(ctx, args["ref"]), args["name"]), ctx)

    @command
    def store(self, args: dict[str, Any], ctx: CallContext) -> str:
        """``{name, value}``: keep a value under a name."""
        self.objects(ctx)[args["name"]] = self.unwire(args["value"], ctx)
        return str(args["name"])

    @command
    def retrieve(self, args: dict[str, Any], ctx: CallContext) -> Any:
        """``{name}``: a stored value (or a ref to it, if it has no wire form)."""
        return self.wire(self._lookup(ctx, args["name"]), ctx, args["name"])

    @command
    def delete(self, args: dict[str, Any], ctx: CallContext) -> bool:
        """``{name}``: forget a stored value or ref; True if there was one."""
        return self.objects(ctx).pop(args["name"], _MISSING) is not _MISSING

    @command("list")
    def list_objects(self, args: Any, ctx: CallContext) -> dict[str, str]:
        """Stored names and refs, with their types."""
        return {key: f"{type(v).__module__}.{type(v).__qualname__}"
                for key, v in self.objects(ctx).items()}

    @command("inspect")
    def inspect_object(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """``{target}`` or ``{ref}``: signature, doc, type and public attributes."""
        obj = self.resolve(args["target"]) if "target" in args else self._lookup(ctx, args["ref"])
        try:
            signature: str | None = str(inspect.signature(obj))
        except (TypeError, ValueError):
            signature = None
        return {"type": f"{type(obj).__module__}.{type(obj).__qualname__}",
                "signature": signature, "doc": inspect.getdoc(obj),
                "callable": callable(obj),
                "attributes": sorted(name for name in dir(obj) if not name.startswith("_"))}

    @command
    def pipeline(self, args: dict[str, Any], ctx: CallContext) -> list[Any]:
        """``{steps: [...]}``: each step a ``call`` (``target``) or ``method`` (``ref``)
        command's arguments; ``store_as`` names results for later steps."""
        results = []
        for step in args["steps"]:
            ctx.check_cancelled()
            if "target" in step:
                results.append(self.call_target(step, ctx))
            else:
                results.append(self.method(step, ctx))
        return results

    def end_session(self, session_id: str) -> None:
        super().end_session(session_id)  # its objects go with its state


_MISSING = object()


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."
