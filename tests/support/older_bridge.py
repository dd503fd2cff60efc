"""A ChaosHandler served by a bridge that does not announce ``withdraw``, as an older or
third-party worker would not: the host must neither withdraw from it nor steal its calls,
and still give its never-started calls to another worker when it dies."""

from snakepit.protocol import wire
from snakepit.testing import ChaosHandler

wire.CAPABILITIES = tuple(c for c in wire.CAPABILITIES if c != "withdraw")

__all__ = ["ChaosHandler"]
