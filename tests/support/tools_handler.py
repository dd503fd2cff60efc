"""Handlers that call back into the host (host tools, events), for tests/pool/test_host_tools.py."""

import os
from collections.abc import Iterator
from typing import Any

from snakepit.bridge import CallCancelled, CallContext, HostToolError, command
from snakepit.testing import ChaosHandler

_configured: dict[str, Any] = {}


class ToolsHandler(ChaosHandler):
    @command
    def ask(self, args: dict[str, Any], ctx: CallContext) -> Any:
        """Call host tool ``tool`` with ``args`` and return what it returned."""
        return ctx.call_host(args["tool"], args.get("args"))

    @command
    def ask_each(self, args: dict[str, Any], ctx: CallContext) -> list[Any]:
        """Call host tool ``tool`` once per item of ``items``."""
        return [ctx.call_host(args["tool"], item) for item in args["items"]]

    @command
    def ask_catching(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Call a host tool; report the HostToolError or CallCancelled it raises."""
        try:
            return {"value": ctx.call_host(args["tool"], args.get("args"))}
        except HostToolError as exc:
            return {"type": exc.host_type, "message": exc.host_message}
        except CallCancelled as exc:
            with open(args["marker"], "w") as f:  # the test reads it: the wait ended
                f.write(str(exc))
            raise

    @command
    def tools(self, args: Any, ctx: CallContext) -> list[dict[str, Any]]:
        return ctx.host_tools()

    @command
    def emit(self, args: dict[str, Any], ctx: CallContext) -> str:
        """Emit ``event`` ``times`` times; a ValueError is returned as text."""
        try:
            for _ in range(args.get("times", 1)):
                ctx.emit(args["event"], args.get("measurements"), args.get("metadata"))
        except ValueError as exc:
            return f"ValueError: {exc}"
        return "sent"

    @command
    def emit_raw(self, args: dict[str, Any], ctx: CallContext) -> str:
        """Send an ``emit`` frame as is, past the worker's checks (a foreign worker)."""
        self.bridge.send({"t": "emit", "call": ctx.id, **args})
        return "sent"

    @command
    def configure(self, args: dict[str, Any]) -> int:
        """Set-up: remember ``args`` in this process; returns the pid."""
        _configured.update(args)
        return os.getpid()

    @command
    def configure_unless(self, args: dict[str, Any]) -> int:
        """Set-up that fails while the file ``path`` exists."""
        if os.path.exists(args["path"]):
            raise RuntimeError("refusing to configure")
        return self.configure({"checked": True})

    @command
    def configured(self) -> dict[str, Any]:
        return {"pid": os.getpid(), **_configured}

    @command
    def die_if(self, args: dict[str, Any]) -> int:
        """Exit at once when this process's pid is ``pid``."""
        if os.getpid() == args["pid"]:
            os._exit(3)
        return os.getpid()

    @command
    def chunks(self, args: dict[str, Any]) -> Iterator[int]:
        yield from range(args["n"])


class ThreadedToolsHandler(ToolsHandler):
    concurrency = 2
