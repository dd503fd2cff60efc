"""Nursery helpers for context managers that own one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def unwrap_single_error() -> Iterator[None]:
    """Raise a lone exception out of the pool's nursery as itself, not in a group.

    The nursery is an implementation detail; callers expect ``WorkerStartupError``
    or their own exception from the block, as if no nursery were there. The exception
    keeps its own ``__cause__``, ``__context__`` and ``__suppress_context__`` (a user's
    ``raise X from Y`` comes out with ``Y`` as its cause): re-raising it here would
    otherwise chain it to the group, so they are put back as they were.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            inner = group.exceptions[0]
            if not isinstance(inner, BaseExceptionGroup):
                _reraise_as_is(inner)
            group = inner
        raise


def _reraise_as_is(error: BaseException) -> None:
    """Raise ``error`` with the chaining it had (``raise`` in an ``except`` block sets
    ``__context__`` to the exception being handled)."""
    cause, context, suppress = error.__cause__, error.__context__, error.__suppress_context__
    try:
        raise error
    finally:
        error.__cause__, error.__context__ = cause, context
        error.__suppress_context__ = suppress
        del error, cause, context
