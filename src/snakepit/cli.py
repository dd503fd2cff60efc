"""The ``snakepit`` command."""

from __future__ import annotations

import argparse
import logging
import sys

import snakepit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snakepit", description="Pools of worker processes.")
    parser.add_argument("--version", action="version", version=snakepit.__version__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the demo: calls, a timeout, a crash, stats")
    demo.add_argument("--workers", type=int, default=4)
    demo.add_argument("--calls", type=int, default=2000)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if options.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    if options.command == "demo":
        import trio

        from snakepit.demo import run_demo

        return trio.run(run_demo, options.workers, options.calls)
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":
    sys.exit(main())
