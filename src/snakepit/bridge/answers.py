"""Describing what a handler raised, without ever raising (standard library only).

The bridge answers every call exactly once, whatever its handler does -- raise
``SystemExit`` or ``KeyboardInterrupt``, raise an exception whose ``__str__`` is broken,
or raise again while its stream is being closed after the answer went out. These
helpers keep that promise: a fault in describing or closing never becomes a fault of
the worker (issue 15, item 1).
"""

from __future__ import annotations

import sys
import traceback
from typing import Any


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """An error frame's ``etype``, ``msg``, ``tb`` (and ``retryable``) for ``exc``.

    Never raises: an exception whose ``__str__`` or traceback cannot be rendered (a
    handler's own class may be broken) is described by what can be.
    """
    kind = type(exc)
    fields: dict[str, Any] = {
        "etype": f"{kind.__module__}.{kind.__qualname__}".removeprefix("builtins.")}
    try:
        fields["msg"] = str(exc)
    except Exception:
        fields["msg"] = f"<{kind.__qualname__}: str() failed>"
    try:
        # the three-argument form: worker interpreters older than 3.10 lack the other
        fields["tb"] = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    except Exception:
        fields["tb"] = ""
    try:
        if getattr(exc, "retryable", False) is True:
            fields["retryable"] = True  # the handler says: transient, send it again
    except Exception:
        pass
    return fields


def sendable_description(frame: dict[str, Any], max_frame_size: int) -> dict[str, Any]:
    """``frame`` (an error answer) with its texts made valid UTF-8 (a lone surrogate
    becomes ``\\udcff``) and cut to a quarter of ``max_frame_size`` together."""
    limit = max(64, max_frame_size // 16)  # each of etype, msg, tb; escapes may grow 4x
    fixed = dict(frame)
    for key in ("etype", "msg", "tb"):
        text = fixed.get(key)
        if isinstance(text, str):
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
            if len(text) > limit:
                text = f"{text[:limit]}... [{len(text) - limit} characters cut]"
            fixed[key] = text
    return fixed


def close_quietly(items: Any, *, reraise: tuple[type[BaseException], ...]) -> None:
    """Close a stream's generator now (its finally blocks run now, not at GC time).

    Its answer may have been sent already, so whatever the generator raises on the way
    out goes to stderr -- a second answer for the same call would break the wire --
    except ``reraise`` (the process is ending: the wire is gone, or SIGTERM came).
    """
    close = getattr(items, "close", None)
    if close is None:
        return
    try:
        close()
    except reraise:
        raise
    except BaseException as exc:
        sys.stderr.write(f"snakepit.bridge: closing a stream raised "
                         f"{describe_exception(exc)['etype']}\n")
