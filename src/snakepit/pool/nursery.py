"""Nursery helpers for context managers that own one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def unwrap_single_error() -> Iterator[None]:
    """Raise a lone exception out of the pool's nursery as itself, not in a group.

    The nursery is an implementation detail; callers expect ``WorkerStartupError``
    or their own exception from the block, as if no nursery were there.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            inner = group.exceptions[0]
            if not isinstance(inner, BaseExceptionGroup):
                raise inner from group.__cause__
            group = inner
        raise

