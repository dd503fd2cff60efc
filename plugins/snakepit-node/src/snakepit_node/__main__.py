"""``python -m snakepit_node install [--node PATH]``: install the worker's npm dependencies
now (in a container build, say) rather than on the first pool start."""

from __future__ import annotations

import argparse
import sys

from snakepit.errors import ConfigError
from snakepit_node import ensure_node_modules, find_node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snakepit_node")
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="install the worker's npm dependencies")
    install.add_argument("--node", help="the node executable (default: the one on PATH)")
    commands.add_parser("where", help="print the worker script's path")
    options = parser.parse_args(argv)
    try:
        if options.command == "install":
            print(ensure_node_modules(find_node(options.node)) / "worker.js")
        else:
            print(ensure_node_modules() / "worker.js")
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
