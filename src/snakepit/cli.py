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
    cleanup = commands.add_parser(
        "cleanup", help="kill worker processes left behind by dead snakepit hosts")
    cleanup.add_argument("--state-dir", default=None,
                         help="registry directory (default: as the pools use)")
    commands.add_parser("plugins", help="list installed plugins, their distributions "
                        "and the hooks they implement")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if options.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    if options.command == "demo":
        import trio

        from snakepit.demo import run_demo

        return trio.run(run_demo, options.workers, options.calls)
    if options.command == "cleanup":
        return run_cleanup(options.state_dir)
    if options.command == "plugins":
        return list_plugins()
    return 2  # pragma: no cover - argparse enforces a command


def list_plugins() -> int:
    """``snakepit plugins``: what is installed, from where, implementing what."""
    from snakepit.plugins import installed_plugins

    plugins = installed_plugins()
    if not plugins:
        print("no snakepit plugins installed")
    for info in plugins:
        print(f"{info.name}  [{info.group}]  from {info.distribution} {info.version}  "
              f"({info.value})")
        if info.error:
            print(f"    FAILED TO LOAD: {info.error}")
        else:
            print(f"    hooks: {', '.join(info.hooks) or '(none)'}")
    return 1 if any(info.error for info in plugins) else 0


def run_cleanup(state_dir: str | None) -> int:
    """``snakepit cleanup``: reap what dead runs left, and say what was killed."""
    from pathlib import Path

    from snakepit.process.registry import default_state_dir, reap_orphans

    directory = Path(state_dir) if state_dir else default_state_dir()
    reaped = reap_orphans(directory)
    for item in reaped:
        print(f"killed pid {item.pid} ({item.why}) of dead run {item.run_id}")
    print(f"{len(reaped)} orphaned process{'es' if len(reaped) != 1 else ''} killed "
          f"(registry: {directory})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
