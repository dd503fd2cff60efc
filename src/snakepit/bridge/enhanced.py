"""The enhanced bridge: call any allowed Python callable, keep objects in the worker.

Serve it with ``PoolConfig(handler="snakepit.bridge.enhanced:EnhancedHandler")``; the
host side is ``pool.call(...)`` and :class:`snakepit.Ref`.

- **Dynamic calls**: ``call`` imports a dotted target (``"json.dumps"``,
  ``"dspy.Predict"``) and calls it. Only what genuinely belongs to a module under the
  pool's ``allowed_targets`` may be reached -- calling arbitrary code is a security
  decision; the host passes the list in ``SNAKEPIT_ALLOWED_TARGETS`` and
  :mod:`snakepit.bridge.targets` holds the rules.
- **Graceful serialization**: a result that is not plain data and that no serializer
  plugin claims is kept in the worker's object store; a ref marker goes back instead,
  and a ref passed as an argument is resolved from the store.
- **Objects**: ``method`` and ``getattr`` on stored objects (public names, owned by an
  allowed module), ``store`` / ``retrieve`` / ``delete`` / ``list`` by name, ``release``
  of refs the host dropped, ``inspect`` for signature, doc and attributes.
- **Host tools**: ``{"$host_tool": name}`` (``snakepit.host_tool(name)``) in the
  arguments becomes a callable that runs that host tool (``ctx.call_host``).
- **Pipelines**: a list of steps whose results may be stored under names that later
  steps use (``{"$stored": "name"}``).

Objects live in the call's session store when it has a session (and go with it), else in
the worker's global store, where a ref lives while the host holds a
:class:`~snakepit.Ref` to it (:mod:`snakepit.bridge.objects`).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from snakepit.bridge.context import CallContext
from snakepit.bridge.handler import CommandHandler, command
from snakepit.bridge.hookspecs import REF_KEY, TAG_KEY
from snakepit.bridge.hostcalls import HOST_TOOL_KEY, HostToolProxy
from snakepit.bridge.objects import ObjectStore, RefNotFound, new_ids
from snakepit.bridge.plugins import Unencodable, decode_value, encode_value, load_serializers
from snakepit.bridge.targets import AllowList, TargetNotAllowed
from snakepit.bridge.values import keeping_refs
from snakepit.protocol import wire

__all__ = ["EnhancedHandler", "RefNotFound", "TargetNotAllowed"]

ALLOWED_ENV = wire.ALLOWED_TARGETS_ENV
STORED_KEY = "$stored"


class EnhancedHandler(CommandHandler):
    """Dynamic calls, an object store with refs, pipelines and inspection."""

    def __init__(self) -> None:
        super().__init__()
        self.serializers = load_serializers()
        self.allowed = AllowList(os.environ.get(ALLOWED_ENV, "").split(","))
        self._ref_ids = new_ids()
        self.global_objects = ObjectStore(self._ref_ids, counted=True)

    # -- the store ---------------------------------------------------------------------
    def objects(self, ctx: CallContext) -> ObjectStore:
        """The object store of the call's session, or the worker's global one."""
        if ctx.session_id is None:
            return self.global_objects
        store: ObjectStore | None = ctx.session.get("objects")
        if store is None:
            store = ctx.session["objects"] = ObjectStore(self._ref_ids, counted=False)
        return store

    def _lookup(self, ctx: CallContext, key: str) -> Any:
        where = f"session {ctx.session_id!r}" if ctx.session_id else "this worker"
        return self.objects(ctx).get(key, where)

    def _argument(self, ctx: CallContext, key: str) -> Any:
        value = self._lookup(ctx, key)
        if not self.allowed.passable(value):
            raise TargetNotAllowed(f"stored object {key!r} ({type(value).__qualname__}) is "
                                   "outside allowed_targets; it cannot be passed to a call")
        return value

    def wire(self, value: Any, ctx: CallContext) -> Any:
        """``value`` as wire data, or a ref to it kept in the store (the same ref for
        an object that is already stored). A serializer's field with no wire form (a
        model output's cache) is kept alone, as a nested ref
        (:func:`~snakepit.bridge.values.encode_fields`)."""
        try:
            with keeping_refs(lambda field: self._keep(field, ctx)):
                return encode_value(value, self.serializers)
        except Unencodable:
            return self._keep(value, ctx)

    def _keep(self, value: Any, ctx: CallContext) -> dict[str, Any]:
        """Keep ``value`` in the call's store; its ref marker."""
        ref_id, counted = self.objects(ctx).issue(value)
        kind = type(value)
        marker: dict[str, Any] = {"id": ref_id,
                                  "type": f"{kind.__module__}.{kind.__qualname__}",
                                  "repr": _short_repr(value)}
        if counted:
            marker["counted"] = True
        return {REF_KEY: marker}

    def unwire(self, data: Any, ctx: CallContext) -> Any:
        """Arguments from the host: tagged values decoded, refs and names resolved."""
        if isinstance(data, dict) and len(data) == 1 and STORED_KEY in data:
            return self._argument(ctx, data[STORED_KEY])
        if isinstance(data, dict) and len(data) == 1 and isinstance(data.get(HOST_TOOL_KEY), str):
            return HostToolProxy(data[HOST_TOOL_KEY])  # a callable that asks the host
        if isinstance(data, list):
            return [self.unwire(item, ctx) for item in data]
        if isinstance(data, dict) and REF_KEY not in data and TAG_KEY not in data:
            return {key: self.unwire(item, ctx) for key, item in data.items()}
        return decode_value(data, self.serializers, lambda ref: self._argument(ctx, ref))

    # -- targets -----------------------------------------------------------------------
    def resolve(self, target: str) -> Any:
        """The object ``package.module.attr...`` names, if it belongs to an allowed module
        (see :mod:`snakepit.bridge.targets`)."""
        return self.allowed.resolve(target)

    def _invoke(self, fn: Any, args: Any, kwargs: Any, ctx: CallContext) -> Any:
        return fn(*self.unwire(args or [], ctx), **self.unwire(kwargs or {}, ctx))

    def _finish(self, value: Any, store_as: str | None, ctx: CallContext) -> Any:
        if store_as:
            self.objects(ctx).put(store_as, value)
        return self.wire(value, ctx)

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
        public method ``name``)."""
        obj = self._lookup(ctx, args["ref"])
        name = args.get("name")
        if name is not None:
            obj = self.allowed.attribute(obj, name)
        else:
            self.allowed.check_callable(obj)
        result = self._invoke(obj, args.get("args"), args.get("kwargs"), ctx)
        return self._finish(result, args.get("store_as"), ctx)

    @command("getattr")
    def get_attribute(self, args: dict[str, Any], ctx: CallContext) -> Any:
        """``{ref, name}``: a public attribute of a stored object."""
        return self.wire(self.allowed.attribute(self._lookup(ctx, args["ref"]), args["name"]),
                         ctx)

    @command
    def store(self, args: dict[str, Any], ctx: CallContext) -> str:
        """``{name, value}``: keep a value under a name."""
        self.objects(ctx).put(args["name"], self.unwire(args["value"], ctx))
        return str(args["name"])

    @command
    def retrieve(self, args: dict[str, Any], ctx: CallContext) -> Any:
        """``{name}``: a stored value (or a ref to it, if it has no wire form)."""
        return self.wire(self._lookup(ctx, args["name"]), ctx)

    @command
    def delete(self, args: dict[str, Any], ctx: CallContext) -> bool:
        """``{name}``: forget a stored value or ref; True if there was one."""
        return self.objects(ctx).delete(args["name"])

    @command
    def release(self, args: dict[str, Any], ctx: CallContext) -> int:
        """``{refs: {ref: count}}``: the host dropped that many of its Refs to each
        (global) ref; returns how many objects were freed."""
        return self.objects(ctx).release(args["refs"])

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

    @command
    def info(self) -> dict[str, Any]:
        """The built-in ``info``, plus how many objects each store holds."""
        facts = super().info()
        facts["objects"] = {
            "global": len(self.global_objects),
            "sessions": {session_id: len(state["objects"])
                         for session_id, state in self.session_state.items()
                         if "objects" in state}}
        return facts

    def end_session(self, session_id: str) -> None:
        super().end_session(session_id)  # its objects go with its state


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."
