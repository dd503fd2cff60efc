"""A ChaosHandler with a call that runs until the test opens a gate (a file appears).

Tests about what happens *while* a call runs hold it open this way instead of picking
a duration and hoping the host keeps up: the call ends when the test says so.
"""

import os
import time
from pathlib import Path
from typing import Any

from snakepit.bridge import CallContext, command
from snakepit.testing import ChaosHandler


class GateHandler(ChaosHandler):
    @command
    def gate(self, args: dict[str, Any], ctx: CallContext) -> int:
        """Report progress, wait (at most 60 s) until ``path`` exists; return the pid."""
        ctx.progress(0, None, "waiting at the gate")
        path, deadline = Path(args["path"]), time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.getpid()
