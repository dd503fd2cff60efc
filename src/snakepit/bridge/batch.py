"""Batch calls on the worker side: many items through one handler, one answer frame.

``pool.map`` sends its items in batch calls (``call`` with a ``batch`` field, see
:mod:`snakepit.protocol.wire`); this module runs one: every item through the same
command, one after another, in order, collecting return values and per-item errors
into one ``results`` frame. Standard library only, like the rest of the bridge.

The loop is the point of batching, so it is kept bare: no frame, no codec call, no
syscall per item. It looks at the wire (for a ``cancel``) and the clock (for the
deadline) between *blocks* of items, a block doubling while it takes less than
:data:`LOOK_EVERY` and shrinking to about that much work once it takes longer (to one
item, once items are that slow); so a cancelled batch stops within about that long
after the item running when the cancel came, and a batch of trivial items pays one
``select`` per ~1000 items.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from snakepit.bridge.context import CallContext
from snakepit.bridge.handler import Command
from snakepit.errors import CallCancelled
from snakepit.protocol import wire

LOOK_EVERY = 0.002
"""Seconds of work after which the batch looks for a cancel and checks its deadline."""

_MAX_BLOCK = 1024


class BatchExpired(Exception):
    """The batch's deadline passed between two items: the rest never runs."""


def error_entry(index: int, exc: BaseException) -> list[Any]:
    """The ``errs`` entry of a ``results`` frame for item ``index``, which raised ``exc``."""
    etype = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return [index, wire.KIND_HANDLER, etype, str(exc), tb,
            getattr(exc, "retryable", False) is True]


def run_batch(cmd: Command, ctx: CallContext) -> dict[str, Any]:
    """Run every item of the batch call ``ctx`` through ``cmd``; returns the ``results``
    frame. ``ctx.args`` is the item list; while an item runs it is that item's arguments.

    Raises:
        CallCancelled: the host cancelled the call (or an item raised it): the rest
            of the items never run, and the whole call is answered cancelled.
        BatchExpired: the deadline passed between items.
    """
    items: list[Any] = ctx.args
    fn, arity, streaming = cmd.fn, cmd.arity, cmd.streaming
    values: list[Any] = []
    append = values.append
    errors: list[list[Any]] = []
    count = len(items)
    start, block = 0, 1
    monotonic = time.monotonic
    first = monotonic()
    while start < count:
        stop = min(count, start + block)
        began = monotonic()
        for index in range(start, stop):
            item = items[index]
            try:  # free in CPython 3.11+ when nothing raises
                if arity == 1:
                    value = fn(item)
                elif arity == 2:
                    ctx.args = item
                    value = fn(item, ctx)
                else:
                    value = fn()
                append(list(value) if streaming else value)
            except CallCancelled:
                raise
            except Exception as exc:
                append(None)
                errors.append(error_entry(index, exc))
        start = stop
        took = monotonic() - began
        if start < count:
            if ctx.cancelled:  # polls the wire for a cancel frame; checks the deadline
                if ctx.expired and not ctx._cancelled:
                    raise BatchExpired(f"the deadline of batch call {ctx.id} passed after "
                                       f"{start} of its {count} items")
                raise CallCancelled(f"batch call {ctx.id} ({ctx.command}) was cancelled "
                                    f"after {start} of its {count} items")
            # about LOOK_EVERY of work per block: one item once items are slow
            block = (max(1, int(block * LOOK_EVERY / took)) if took >= LOOK_EVERY
                     else min(_MAX_BLOCK, block * 2))
    ctx.args = items
    frame: dict[str, Any] = {wire.TAG: wire.RESULTS, "id": ctx.id, "values": values,
                             "ran": monotonic() - first}
    if errors:
        frame["errs"] = errors
    return frame
