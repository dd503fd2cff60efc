"""A module that, like many real ones, imports other modules and re-exports builtins.

The enhanced bridge's allow-list tests allow ``reexports`` and check that only what
this module itself defines is reachable through it.
"""

import os
import sys
from builtins import eval, getattr, open  # noqa: UP029  (re-exported on purpose)

__all__ = ["Holder", "apply", "double", "eval", "getattr", "open", "os", "sys"]


def double(value: int) -> int:
    """Defined here: reachable when ``reexports`` is allowed."""
    return value * 2


def apply(fn: object, *args: object) -> object:
    """Calls what it is given: a stored object that is not allowed must never get here."""
    return fn(*args)  # type: ignore[operator]


class Holder:
    """An object whose public attributes reach outside the allowed module."""

    def __init__(self) -> None:
        self.value = 3
        self.system = os.system
        self.modules = sys
        self.again = self

    def give_eval(self) -> object:
        return eval

    def same(self) -> "Holder":
        return self
