"""``python -m snakepit.bridge``: start a worker that serves a handler over stdin/stdout."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from snakepit.bridge.handler import CommandHandler
from snakepit.bridge.process import die_with_parent
from snakepit.bridge.server import serve

DEFAULT_HANDLER = "snakepit.bridge:CommandHandler"


def load_handler(spec: str) -> CommandHandler:
    """Import ``module:Class`` and instantiate it."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"handler must look like 'module:Class', got {spec!r}")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, CommandHandler)):
        raise TypeError(f"{spec} is not a snakepit.bridge.CommandHandler subclass")
    return obj()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snakepit.bridge", description=__doc__)
    parser.add_argument("--handler", default=DEFAULT_HANDLER, help="module:Class to serve")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="calls run at once (default: the handler's own)")
    parser.add_argument("--preload", action="append", default=[], metavar="MODULE",
                        help="a module to import before the handler (repeatable)")
    options = parser.parse_args(argv)
    die_with_parent()  # before a slow handler import: the host may die meanwhile
    try:
        for name in options.preload:
            importlib.import_module(name)
    except Exception:
        sys.stderr.write(f"snakepit.bridge: cannot preload {options.preload!r}\n")
        traceback.print_exc()
        return 3
    try:
        handler = load_handler(options.handler)
    except Exception:
        sys.stderr.write(f"snakepit.bridge: cannot load handler {options.handler!r}\n")
        traceback.print_exc()
        return 3
    return serve(handler, concurrency=options.concurrency)


if __name__ == "__main__":
    sys.exit(main())
