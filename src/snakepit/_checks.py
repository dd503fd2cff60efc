"""Validation of the configuration classes: attrs validators that all run, and one
:class:`~snakepit.errors.ConfigError` that names every failure with its path.

attrs runs a class's validators in ``__init__`` and stops at the first that raises.
The configuration classes want every bad field named at once, so their validators
(:class:`Check`) stand aside while their own instance is being built
(``__attrs_pre_init__`` = :func:`building`), and ``__attrs_post_init__``
(:func:`validate`) runs them all, then the class's checks across fields
(``_cross_checks``). Outside construction -- ``attrs.validate(config)`` -- a
:class:`Check` raises as any attrs validator does.

Failures are gathered the way cattrs gathers structuring failures: each exception gets
an :class:`~cattrs.errors.AttributeValidationNote` naming its field, a class's
failures make one :class:`~cattrs.errors.ClassValidationError`, and a nested table's
group sits in its parent's. :func:`config_error` turns such a group into the
``"path.to.field: what is wrong"`` lines of a ConfigError with cattrs'
``transform_error``, whether the group came from building a class or from the
converter in :mod:`snakepit.config` structuring a table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from cattrs import transform_error
from cattrs.errors import AttributeValidationNote, ClassValidationError

from snakepit import errors as _errors
from snakepit.errors import ConfigError

_building: set[int] = set()
"""``id`` of each configuration instance whose ``__init__`` is running."""


class Check:
    """An attrs validator: ``problem(value)`` says what is wrong with a value, or None.

    Raises ``ValueError`` with that text, except while its own instance is being built
    (:func:`validate` runs it then, with the others).
    """

    __slots__ = ("problem",)

    def __init__(self, problem: Callable[[Any], str | None]) -> None:
        self.problem = problem

    def __call__(self, instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if id(instance) in _building:
            return
        text = self.problem(value)
        if text is not None:
            raise ValueError(text)


def must(ok: Callable[[Any], bool], description: str) -> Check:
    """A :class:`Check` that ``ok(value)`` holds: ``"<description> (got <value>)"``."""
    return Check(lambda value: None if ok(value) else f"{description} (got {value!r})")


# -- predicates ------------------------------------------------------------------------
def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, finite: every duration here has ``None`` for "no limit", so
    ``inf`` (a ladder that never SIGKILLs, a start-up that never times out) and ``nan``
    are mistakes."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def at_least(bound: float, *, integer: bool = False) -> Callable[[Any], bool]:
    kind = is_int if integer else is_number
    return lambda value: kind(value) and value >= bound


def positive(value: Any) -> bool:
    return is_number(value) and value > 0


def optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or ok(value)


def non_empty_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def str_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(item, str) for item in value)


def mapping_of(keys: type, values: type) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, Mapping) and all(
        isinstance(k, keys) and isinstance(v, values) for k, v in value.items())


def to_tuple(value: Any) -> Any:
    """An attrs converter: a list or tuple becomes a tuple; anything else (a string,
    which ``tuple()`` would split into characters) is left for the validator."""
    return tuple(value) if isinstance(value, list | tuple) else value


ERROR_NAMES = frozenset(name for name in _errors.__all__
                        if isinstance(getattr(_errors, name), type))
"""The error classes a policy may name (``snakepit.errors``)."""


def error_names(what: str, *, allow_none: bool = False) -> Check:
    """A check that a value is a list of error class names, each one that exists."""
    def problem(value: Any) -> str | None:
        if value is None and allow_none:
            return None
        if not str_tuple(value):
            return f"must be a list of {what}{' or None' if allow_none else ''} (got {value!r})"
        unknown = [name for name in value if name not in ERROR_NAMES]
        if unknown:
            return (f"no error class named {', '.join(map(repr, unknown))}; known: "
                    f"{', '.join(sorted(ERROR_NAMES))}")
        return None

    return Check(problem)


# -- running every check ---------------------------------------------------------------
def noted(exc: Exception, name: str, kind: Any = None) -> Exception:
    """``exc`` with cattrs' note that it concerns field (or key) ``name``."""
    exc.add_note(AttributeValidationNote(f"invalid {name}", name, kind))
    return exc


def in_field_order(cls: type[Any], found: list[Exception]) -> list[Exception]:
    """``found`` (each noted with its field) in the order of the fields of ``cls``:
    unknown keys first, checks across fields last."""
    order = {field.name: index for index, field in enumerate(attrs.fields(cls))}

    def position(exc: Exception) -> int:
        name = next(note.name for note in getattr(exc, "__notes__", ())
                    if isinstance(note, AttributeValidationNote))
        known = name in order or name.split(".")[0] in order
        return order.get(name, len(order)) if known else -1

    return sorted(found, key=position)


CrossChecks = Callable[[Mapping[str, Any], set[str]], Iterable[tuple[str, str]]]
"""A class's checks across fields: ``(values, names of bad fields)`` to
``(field, what is wrong)`` pairs, made only where every field involved is valid."""


def problems(cls: type[Any], values: Mapping[str, Any],
             bad: Iterable[str] = ()) -> list[Exception]:
    """Every failure of the fields of ``cls`` in ``values`` and of its cross checks,
    each noted with its field; ``bad`` names fields already known to be wrong."""
    found: list[Exception] = []
    failed = set(bad)
    for field in attrs.fields(cls):
        if field.name not in values or field.name in failed or field.validator is None:
            continue
        try:
            field.validator(None, field, values[field.name])
        except (TypeError, ValueError) as exc:
            found.append(noted(exc, field.name, field.type))
            failed.add(field.name)
    cross: CrossChecks | None = getattr(cls, "_cross_checks", None)
    if cross is not None:
        found += [noted(ValueError(text), name) for name, text in cross(values, failed)]
    return found


def defaults(cls: type[Any]) -> dict[str, Any]:
    """The default value of each field of ``cls`` that has one."""
    factory = attrs.Factory  # a class, though attrs' stubs type it as a function
    return {field.name: field.default.factory()
            if isinstance(field.default, factory)  # type: ignore[arg-type]
            else field.default
            for field in attrs.fields(cls) if field.default is not attrs.NOTHING}


def building(instance: Any) -> None:
    """``__attrs_pre_init__`` of a configuration class: defer its validators."""
    _building.add(id(instance))


def validate(instance: Any) -> None:
    """``__attrs_post_init__`` of a configuration class: run every check at once.

    Raises:
        ConfigError: naming every bad field.
    """
    _building.discard(id(instance))
    cls = type(instance)
    found = problems(cls, {field.name: getattr(instance, field.name)
                           for field in attrs.fields(cls)})
    if found:
        raise config_error(ClassValidationError(f"invalid {cls.__name__}", found, cls))


# -- messages --------------------------------------------------------------------------
def _describe(exc: BaseException, kind: Any) -> str:
    if isinstance(exc, KeyError):
        return "required"
    return str(exc) or type(exc).__name__


_KEY = re.compile(r"\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]")


def config_error(group: ClassValidationError, path: str = "") -> ConfigError:
    """The :class:`ConfigError` of a cattrs exception group: one ``"path: message"``
    line per failure (``transform_error``), a mapping's keys joined with dots."""
    lines = []
    for line in transform_error(group, "$", _describe):
        message, _, where = line.rpartition(" @ ")
        where = _KEY.sub(lambda key: "." + key.group(1)[1:-1], where)
        where = (path + where[1:]) if path else where[2:]
        lines.append(f"{where or path or 'config'}: {message}")
    return ConfigError(lines)
