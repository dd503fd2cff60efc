"""A ChaosHandler that reports how its payloads travelled (the shared-memory tests)."""

import os
from typing import Any

from snakepit.bridge import CallContext, command
from snakepit.protocol import shm
from snakepit.testing import ChaosHandler


class SharedMemoryHandler(ChaosHandler):
    @command
    def segment_counts(self) -> dict[str, int]:
        """How many segments this worker has read and written."""
        codec = self.bridge._codec
        if not isinstance(codec, shm.SharedMemoryCodec):
            return {"received": -1, "sent": -1}
        return {"received": codec.received, "sent": codec.sent, "created": codec.pool.created}

    @command
    def type_of(self, args: Any) -> str:
        """The type of the arguments as they arrived."""
        return type(args).__name__

    @command
    def length(self, args: Any) -> int:
        """The length of the bytes it was given."""
        return len(args)

    @command
    def reject(self, args: Any) -> None:
        """Take a blob and fail."""
        raise ValueError(f"refusing {len(args)} bytes")

    @command
    def crash_holding_a_segment(self, args: dict[str, int], ctx: CallContext) -> None:
        """Write a large result to a segment, then die before sending it."""
        self.bridge._codec.encode({"t": "result", "id": ctx.id, "value": b"x" * args["size"]})
        os._exit(1)
