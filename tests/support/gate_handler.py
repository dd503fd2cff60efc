"""A ChaosHandler whose ``gate`` call is ``block_until`` answering with its pid.

Tests about what happens *while* a call runs hold it open this way instead of picking
a duration and hoping the host keeps up: the call ends when the test says so, and its
answer names the process that served it.
"""

import os
from typing import Any

from snakepit.bridge import CallContext, command
from snakepit.testing import ChaosHandler


class GateHandler(ChaosHandler):
    @command
    def gate(self, args: dict[str, Any], ctx: CallContext) -> int:
        """``block_until`` (progress, then wait until ``path`` exists); return the pid."""
        self.block_until(args, ctx)
        return os.getpid()
