"""Validation helpers shared by the configuration classes: a check is a field name,
a predicate on its value, and what the value must be; every failing check is reported
at once, in one ConfigError."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from snakepit.errors import ConfigError

# A check is (field name, predicate on the value, what the value must be).
Check = tuple[str, Callable[[Any], bool], str]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and not math.isnan(value)


def _at_least(bound: float, *, integer: bool = False) -> Callable[[Any], bool]:
    kind = _is_int if integer else _is_number
    return lambda value: kind(value) and value >= bound


def _positive(value: Any) -> bool:
    return _is_number(value) and value > 0


def _check_errors(values: Mapping[str, Any], checks: list[Check]) -> list[str]:
    return [
        f"{name}: {must} (got {values[name]!r})"
        for name, ok, must in checks
        if name in values and not ok(values[name])
    ]


def _run_checks(instance: Any, checks: list[Check]) -> None:
    errors = _check_errors({name: getattr(instance, name) for name, _, _ in checks}, checks)
    if errors:
        raise ConfigError(errors)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _tuple_or_none(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)
