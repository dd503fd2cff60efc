"""A handler whose faults are in the awkward places: an exception that cannot be
printed, a stream that raises SystemExit while it is closed, a session hook that
raises. Each is its call's problem (or nobody's), never the worker's end."""

from collections.abc import Iterator
from typing import Any

from snakepit.bridge import CallContext, CommandHandler, command


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class UnrulyHandler(CommandHandler):
    @command
    def unprintable(self) -> None:
        raise Unprintable

    @command
    def huge_error(self, args: Any) -> None:
        raise ValueError("x" * int(args["size"]))

    @command
    def surrogate_error(self) -> None:
        raise ValueError("bad \udcff text")

    @command
    def exit_on_close(self, args: Any) -> Iterator[int]:
        try:
            yield 1
            yield object()  # cannot travel: the stream ends with a PayloadError
            yield 3
        finally:
            raise SystemExit("closing")

    @command
    def remember(self, args: Any, ctx: CallContext) -> int:
        ctx.session["n"] = ctx.session.get("n", 0) + 1
        return int(ctx.session["n"])

    def end_session(self, session_id: str) -> None:
        super().end_session(session_id)
        raise KeyboardInterrupt("end_session")
