"""What the enhanced bridge may reach: dotted targets and attributes, checked by owner.

Worker side, standard library only. Checking the *text* of a target against the
allow-list is not enough: modules import other modules, so ``json.codecs.builtins.eval``
is a path under ``json`` that ends at ``eval``. So a target is resolved step by step,
and every object a step reaches must genuinely belong to an allowed module:

- the walk starts from the longest prefix that is an allowed module (or a package on the
  way to an allowed entry, such as ``os`` for the entry ``os.getpid``);
- no step may use a private or dunder name (``_x``, ``__builtins__``);
- a step may land on a module only if that module's own name is allowed (``statistics.sys``
  is refused: ``sys`` is not ``statistics``);
- any other object must be *owned* by an allowed module: its ``__module__`` (for a bound
  method: its function's or the bound object's; for an instance: its type's) is under an
  allowed prefix, or is the C accelerator of one (``_operator`` for ``operator``).
  Builtins re-exported by an allowed module (``eval``, ``getattr``, ``open``) belong to
  ``builtins`` and are refused. Instances of the plain data types (str, int, list, dict...)
  are data and pass, and so do their methods;
- formatting methods (``format``, ``format_map``, ``vformat``, ``get_field``) are refused
  by name on any object: their format fields read the attributes they name, private ones
  included (``str.format``, ``collections.UserString.format``);
- an allow-list entry that names one object exactly (``"os.getpid"``) allows that object,
  wherever it was defined.

Attributes of stored objects (``ref.getattr``, ``ref.method``) follow the same rule.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Iterable
from typing import Any

__all__ = ["AllowList", "TargetNotAllowed"]

#: Types whose instances are inert data: reaching one, or calling its methods, runs no
#: code beyond the type's own (which only computes).
PLAIN_TYPES: frozenset[type] = frozenset({
    int, float, complex, bool, str, bytes, bytearray, list, tuple, dict, set, frozenset,
    type(None), range, slice})

#: Names of formatting methods, refused whatever they belong to: their format fields
#: read the attributes they name, as ``"{0.__init__.__globals__}".format(obj)`` does, so
#: a template from the host would walk any object's private attributes. ``str`` has
#: them, and so do ``collections.UserString`` and ``string.Formatter``.
FORMATTING_METHODS = frozenset({"format", "format_map", "vformat", "get_field"})

_BOUND = (types.MethodType, types.BuiltinMethodType)
_DESCRIPTORS = (types.MethodDescriptorType, types.ClassMethodDescriptorType,
                types.WrapperDescriptorType, types.MethodWrapperType,
                types.GetSetDescriptorType, types.MemberDescriptorType)


class TargetNotAllowed(PermissionError):
    """The target (or attribute) reaches something outside the pool's ``allowed_targets``."""


def _check_step(name: str, where: str) -> None:
    """Refuse one attribute step that no remote caller may take: a private or dunder
    name, or a formatting method (its format fields would read any attribute).

    Raises:
        TargetNotAllowed: the step is refused; ``where`` begins the message.
    """
    if name.startswith("_"):
        raise TargetNotAllowed(f"{where} private name {name!r} is not reachable remotely")
    if name in FORMATTING_METHODS:
        raise TargetNotAllowed(f"{where} {name!r} is not reachable remotely: its format "
                               "fields would read any attribute")


class AllowList:
    """The pool's ``allowed_targets``, and the ownership checks built on them."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        self.prefixes = tuple(prefix for prefix in prefixes if prefix)

    def __repr__(self) -> str:
        return f"AllowList({list(self.prefixes)})"

    # -- names -------------------------------------------------------------------------
    def covers(self, dotted: str) -> bool:
        """Whether ``dotted`` is an entry or lies under one (by whole components)."""
        return any(dotted == prefix or dotted.startswith(prefix + ".")
                   for prefix in self.prefixes)

    def module_allowed(self, name: object) -> bool:
        """Whether objects defined in module ``name`` belong to an allowed module. A C
        accelerator counts as the module it accelerates (``_json`` as ``json``)."""
        if not isinstance(name, str) or not name:
            return False
        return self.covers(name) or (name.startswith("_") and not name.startswith("__")
                                     and self.covers(name[1:]))

    def _on_the_way(self, name: str, target: str) -> bool:
        """Whether module ``name`` is a package on the way to an entry ``target`` is under."""
        return any(prefix.startswith(name + ".") and
                   (target == prefix or target.startswith(prefix + "."))
                   for prefix in self.prefixes)

    # -- objects -----------------------------------------------------------------------
    def owns(self, obj: Any, extra: frozenset[str] = frozenset()) -> bool:
        """Whether ``obj`` belongs to an allowed module (``extra``: module names also
        accepted, those a resolution imported by an allowed name)."""
        def allowed(name: object) -> bool:
            return name in extra or self.module_allowed(name)

        if isinstance(obj, types.ModuleType):
            return allowed(obj.__name__)
        if type(obj) in PLAIN_TYPES:
            return True
        if isinstance(obj, type):
            return allowed(obj.__module__)
        if isinstance(obj, _BOUND):
            owner = obj.__self__
            if owner is None or isinstance(owner, types.ModuleType):  # a builtin function
                return allowed(getattr(obj, "__module__", None)) or (
                    owner is not None and allowed(owner.__name__))
            if obj.__name__ in FORMATTING_METHODS:
                return False
            # a method: its function's module, or the object it is bound to
            return allowed(getattr(obj, "__module__", None)) or self.owns(owner, extra)
        if isinstance(obj, _DESCRIPTORS):
            return self.owns(obj.__objclass__, extra)
        module = getattr(obj, "__module__", None)  # functions; wrappers keep their origin's
        if not isinstance(module, str):
            module = type(obj).__module__
        return allowed(module)

    def passable(self, value: Any) -> bool:
        """Whether a stored ``value`` may be passed as an argument: modules and callables
        must be owned (code could call them); other objects are values that allowed code
        made, and may go back to it."""
        if isinstance(value, types.ModuleType) or callable(value):
            return self.owns(value)
        return True

    def attribute(self, obj: Any, name: str) -> Any:
        """``getattr(obj, name)`` for a stored object, if ``name`` is public and what it
        reaches is owned by an allowed module (or plain data).

        Raises:
            TargetNotAllowed: a private name, or an object of a module not allowed.
        """
        if not isinstance(name, str) or not name or "." in name:
            raise TargetNotAllowed(f"attribute {name!r} is not reachable remotely (dotted "
                                   "names are refused)")
        _check_step(name, f"{_kind(obj)}.{name}:")
        value = getattr(obj, name)
        if not self.owns(value):
            raise TargetNotAllowed(f"{_kind(obj)}.{name} is {_describe(value)}, outside "
                                   f"allowed_targets {list(self.prefixes)}")
        return value

    def check_callable(self, obj: Any) -> None:
        """Refuse calling a stored object that no allowed module owns.

        Raises:
            TargetNotAllowed: ``obj`` (say, a builtin reached indirectly) is not owned.
        """
        if not self.owns(obj):
            raise TargetNotAllowed(f"{_describe(obj)} is outside allowed_targets "
                                   f"{list(self.prefixes)}; it cannot be called remotely")

    # -- targets -----------------------------------------------------------------------
    def resolve(self, target: str) -> Any:
        """The object a dotted ``target`` names, imported and walked under the rules above.

        Raises:
            TargetNotAllowed: the target, or an object on the way, is not allowed.
            ImportError: no module prefix of the target can be imported.
            AttributeError: a step names no attribute.
        """
        if not isinstance(target, str) or not self.covers(target):
            raise TargetNotAllowed(f"{target!r} is not under allowed_targets "
                                   f"{list(self.prefixes)}")
        parts = target.split(".")
        if not all(parts):
            raise TargetNotAllowed(f"{target!r} is not a dotted name")
        obj: Any = None
        start = 0
        for split in range(len(parts), 0, -1):
            name = ".".join(parts[:split])
            if not (self.covers(name) or self._on_the_way(name, target)):
                continue
            try:
                obj = importlib.import_module(name)
            except ImportError:
                continue
            start = split
            break
        if obj is None:
            raise ImportError(f"cannot import any module of {target!r}")
        # a module imported by an allowed name owns what it defines, even when its real
        # name differs (``os.path`` is ``posixpath``)
        extra = frozenset({obj.__name__}) if self.covers(".".join(parts[:start])) else (
            frozenset())
        for step in range(start, len(parts)):
            attr = parts[step]
            _check_step(attr, f"{target!r}:")
            obj = getattr(obj, attr)
            path = ".".join(parts[:step + 1])
            if path in self.prefixes and not isinstance(obj, types.ModuleType):
                continue  # named exactly by an entry: allowed wherever it was defined
            if isinstance(obj, types.ModuleType):
                if not self.module_allowed(obj.__name__):
                    raise TargetNotAllowed(f"{target!r}: {path} is module {obj.__name__!r}, "
                                           f"which is not under allowed_targets "
                                           f"{list(self.prefixes)}")
            elif not self.owns(obj, extra):
                raise TargetNotAllowed(f"{target!r}: {path} is {_describe(obj)}, outside "
                                       f"allowed_targets {list(self.prefixes)}")
        return obj


def _kind(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _describe(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__!r}"
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{name!r} from module {module if isinstance(module, str) else _kind(obj)!r}"
