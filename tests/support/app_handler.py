"""An application's own handler, as a user writes one: nothing about faults in it."""

from typing import Any

from snakepit.bridge import CommandHandler, command


class AppHandler(CommandHandler):
    @command
    def predict(self, args: dict[str, Any]) -> dict[str, Any]:
        """A model's answer: twice the input."""
        return {"label": args["x"] * 2}

    @command
    def numbers(self, args: dict[str, Any]) -> Any:
        """Stream 0 .. n-1."""
        yield from range(int(args["n"]))
