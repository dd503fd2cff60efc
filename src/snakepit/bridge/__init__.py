"""The worker side: serve a :class:`CommandHandler` over stdin/stdout.

Run ``python -m snakepit.bridge --handler package.module:HandlerClass``. This package
imports only the standard library (and msgpack when present) so that it runs in any
worker environment: importing it never imports trio, attrs or cattrs.
"""

from snakepit.bridge.context import CallContext
from snakepit.bridge.handler import CommandHandler, RetryableError, command
from snakepit.bridge.hostcalls import current_context
from snakepit.bridge.server import BridgeServer, serve
from snakepit.errors import CallCancelled, HostToolError

__all__ = ["BridgeServer", "CallCancelled", "CallContext", "CommandHandler", "HostToolError",
           "RetryableError", "command", "current_context", "serve"]
