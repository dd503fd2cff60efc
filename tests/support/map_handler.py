"""A ChaosHandler with per-item commands for ``pool.map`` tests.

``record`` leaves a trace of every item it ran (a line ``item pid`` in a log file), so a
test can tell that no item was lost and none ran twice, and where each one ran; it can
also hold an item until a gate file exists (announcing it with a progress report, so the
test waits for an event, not for a while) and crash the worker on one item.
"""

import os
import time
from typing import Any

from snakepit.bridge import CallContext, command
from snakepit.testing import ChaosHandler


class MapHandler(ChaosHandler):
    @command
    def record(self, args: dict[str, Any], ctx: CallContext) -> int:
        """Append ``item pid`` to ``log``; first wait for ``gate`` to exist (after a
        progress report) and, with ``crash``, exit instead of returning."""
        gate = args.get("gate")
        if gate is not None:
            ctx.progress(0, None, f"item {args['item']} waits for its gate")
            while not os.path.exists(gate):
                time.sleep(0.005)
        if args.get("crash"):
            os._exit(1)
        with open(args["log"], "a") as log:
            log.write(f"{args['item']} {os.getpid()}\n")
        return int(args["item"])

    @command
    def fail_odd(self, x: int) -> int:
        """Return ``x``, or raise ValueError for an odd ``x``."""
        if x % 2:
            raise ValueError(f"odd item {x}")
        return x

    @command
    def square(self, x: int) -> int:
        return x * x

    @command
    def nap_item(self, args: dict[str, Any], ctx: CallContext) -> int:
        """Sleep ``seconds`` (cooperatively: a cancel stops it), then return ``item``;
        each item that starts appends its number to ``log``."""
        with open(args["log"], "a") as log:
            log.write(f"{args['item']}\n")
        if ctx.wait_cancelled(args["seconds"]):
            from snakepit.bridge import CallCancelled
            raise CallCancelled("nap_item cancelled")
        return int(args["item"])
