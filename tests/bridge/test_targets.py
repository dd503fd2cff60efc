"""The enhanced bridge's allow-list: what a dotted target or a ref's attribute may reach.

These run the resolver in-process: it is a pure function of the allow-list and the
modules. ``test_enhanced.py`` checks the same rules through a real pool.
"""

from __future__ import annotations

import builtins
import collections
import datetime
import fractions
import importlib
import json
import os
import sys
import types
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snakepit.bridge.targets import PLAIN_TYPES, AllowList, TargetNotAllowed

STDLIB = ("json", "math", "statistics", "fractions", "decimal", "datetime", "itertools",
          "collections", "textwrap", "difflib", "unicodedata", "operator", "functools",
          "string", "json.decoder", "collections.abc")
PROBES = ("__builtins__", "__globals__", "__class__", "__dict__", "__init__", "_sys", "sys",
          "os", "builtins", "codecs", "re", "eval", "modules", "system", "__subclasses__")
_BUILTIN_OBJECTS = {id(value) for value in vars(builtins).values()
                    if type(value) not in PLAIN_TYPES}


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def assert_owned(obj: Any, prefixes: tuple[str, ...]) -> None:
    """The property: a resolved object belongs to an allowed module."""
    if type(obj) in PLAIN_TYPES:
        return  # data
    if isinstance(obj, types.ModuleType):
        assert under(obj.__name__, prefixes), obj
        return
    assert "builtins" in prefixes or id(obj) not in _BUILTIN_OBJECTS, obj
    if type(getattr(obj, "__self__", None)) in PLAIN_TYPES:
        return  # a method of a piece of data ("abc".upper)
    owner = getattr(obj, "__module__", None)
    if hasattr(obj, "__objclass__"):  # a slot or method of a class: the class decides
        owner = obj.__objclass__.__module__
    if not isinstance(owner, str):  # a bound builtin method: its object decides
        owner = getattr(obj, "__self__", None)
        owner = (owner.__module__ if isinstance(owner, type)
                 else type(owner).__module__)
    if isinstance(obj, types.MethodType) and not under(owner.lstrip("_"), prefixes):
        owner = type(obj.__self__).__module__  # an inherited method of an owned object
    assert under(owner.lstrip("_"), prefixes), (obj, owner)


_NAMES: dict[int, tuple[Any, list[str], list[str]]] = {}


def names_of(obj: Any) -> tuple[list[str], list[str]]:
    """``obj``'s public attribute names and all of them (with the probes), listed once
    per object: some objects gain attributes as the tests run (caches, lazy imports),
    and hypothesis needs the same choices when it replays an example."""
    known = _NAMES.get(id(obj))
    if known is None or known[0] is not obj:
        names = set(dir(obj))
        known = (obj, sorted(n for n in names if not n.startswith("_")),
                 sorted(names | set(PROBES)))
        _NAMES[id(obj)] = known
    return known[1], known[2]


@st.composite
def walks(draw: st.DrawFn) -> tuple[tuple[str, ...], str]:
    """An allow-list drawn from stdlib modules, and a dotted path that starts at one of
    them and follows real attribute names (private and dunder ones included)."""
    prefixes = tuple(draw(st.lists(st.sampled_from(STDLIB), min_size=1, max_size=4,
                                   unique=True)))
    start = draw(st.sampled_from(prefixes))
    obj: Any = importlib.import_module(start)
    path = [start]
    for _ in range(draw(st.integers(1, 4))):
        public, anything = names_of(obj)
        name = draw(st.sampled_from(public) | st.sampled_from(anything) if public
                    else st.sampled_from(anything))
        path.append(name)
        try:
            obj = getattr(obj, name)
        except Exception:
            break
    return prefixes, ".".join(path)


@settings(max_examples=400, deadline=None)
@given(walks())
def test_whatever_resolves_belongs_to_an_allowed_module(
        walk: tuple[tuple[str, ...], str]) -> None:
    prefixes, target = walk
    try:
        obj = AllowList(prefixes).resolve(target)
    except (TargetNotAllowed, AttributeError, ImportError):
        return
    assert_owned(obj, prefixes)


def test_the_audits_payloads_are_refused() -> None:
    allowed = AllowList(("json", "statistics", "functools", "fractions"))
    for target in ("json.codecs.builtins.eval", "statistics.sys.modules",
                   "functools.__builtins__", "fractions.operator.attrgetter",
                   "statistics.random.Random", "json.dumps.__globals__"):
        with pytest.raises(TargetNotAllowed):
            allowed.resolve(target)


def test_what_allowed_modules_define_resolves() -> None:
    allowed = AllowList(("json", "datetime", "collections", "statistics", "operator"))
    assert allowed.resolve("json.dumps") is json.dumps
    assert allowed.resolve("json.decoder.JSONDecoder") is json.JSONDecoder
    assert allowed.resolve("datetime.datetime.now") == datetime.datetime.now
    assert allowed.resolve("collections.abc.Mapping").__name__ == "Mapping"
    assert allowed.resolve("statistics.mean")([1, 2, 3]) == 2
    assert allowed.resolve("operator.add")(1, 2) == 3  # from _operator, its accelerator
    assert allowed.resolve("statistics.mul")(2, 3) == 6  # operator's, and operator is allowed
    with pytest.raises(TargetNotAllowed, match="outside allowed_targets"):
        AllowList(("statistics",)).resolve("statistics.mul")  # re-exported from operator
    with pytest.raises(TargetNotAllowed, match="not under allowed_targets"):
        allowed.resolve("jsonx.dumps")  # prefixes match whole components


def test_an_entry_may_name_one_object_or_an_aliased_module() -> None:
    getpid = AllowList(("os.getpid", "builtins.str"))
    assert getpid.resolve("os.getpid") is os.getpid  # posix's, but named exactly
    assert getpid.resolve("builtins.str") is str
    with pytest.raises(TargetNotAllowed):
        getpid.resolve("builtins.eval")
    for target in ("os.getcwd", "os.system", "os"):
        with pytest.raises(TargetNotAllowed):
            getpid.resolve(target)
    # os.path is posixpath: imported by an allowed name, it owns what it defines
    assert AllowList(("os.path",)).resolve("os.path.join") is os.path.join
    with pytest.raises(TargetNotAllowed):
        AllowList(("os.path",)).resolve("os.path.os.system")


def test_attributes_of_stored_objects() -> None:
    allowed = AllowList(("fractions",))
    third = fractions.Fraction(1, 3)
    assert allowed.attribute(third, "numerator") == 1
    assert allowed.attribute(third, "limit_denominator")(1) == 0
    for name in ("__class__", "_numerator", "numerator.real", ""):
        with pytest.raises(TargetNotAllowed, match="not reachable remotely"):
            allowed.attribute(third, name)
    holder = types.SimpleNamespace(run=os.system, mod=sys, data=[1, 2])
    assert allowed.attribute(holder, "data") == [1, 2]  # plain data is data
    for name in ("run", "mod"):
        with pytest.raises(TargetNotAllowed, match="outside allowed_targets"):
            allowed.attribute(holder, name)
    with pytest.raises(TargetNotAllowed, match="cannot be called remotely"):
        allowed.check_callable(eval)
    assert allowed.passable(third) and allowed.passable(third.limit_denominator)
    assert not allowed.passable(eval) and not allowed.passable(os)
    assert allowed.passable(holder)  # an inert value: allowed code may be handed it


def test_format_strings_cannot_read_attributes() -> None:
    template = "{0.__init__.__globals__}"
    allowed = AllowList(("decimal",))
    assert allowed.attribute(template, "upper")() == template.upper()  # data methods pass
    wrapped = collections.UserString(template)
    for name in ("format", "format_map"):
        for obj in (template, wrapped):
            with pytest.raises(TargetNotAllowed, match="format fields"):
                allowed.attribute(obj, name)
    assert not allowed.owns(template.format)  # however it was obtained
    with pytest.raises(TargetNotAllowed, match="format fields"):
        allowed.resolve("decimal.ROUND_UP.format")
