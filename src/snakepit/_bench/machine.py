"""Machine states for the benchmark: idle, or with another CPU kept busy.

DESIGN.md measured that with the other CPU kept busy by a spinning process, a blocking
round trip through a pipe got *faster* (the kernel hands the wake-up over on the same
CPU) while every epoll-based pool got slower: when the host owns half a CPU, its CPU
per call is the throughput. So ``snakepit bench --state busy`` (or ``both``) runs the
sections with one such spinner running, and the report says which state it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Iterator

STATES = ("idle", "busy")

_SPIN = "while True:\n    pass\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--state`` and ``--busy`` (and ``--items``, the map section's size)."""
    parser.add_argument("--items", type=int, default=100_000,
                        help="items per map run (100000)")
    parser.add_argument("--state", choices=(*STATES, "both"), default="idle",
                        help="machine state: idle, busy (another CPU kept busy by a "
                             "spinning process) or both, one after the other (idle)")
    parser.add_argument("--busy", action="store_const", const="busy", dest="state",
                        help="same as --state busy")


@contextlib.contextmanager
def state(name: str) -> Iterator[None]:
    """Run the block in machine state ``name``: ``idle`` changes nothing; ``busy`` keeps
    one CPU busy with a spinning process (a plain Python loop) until the block ends."""
    if name == "idle":
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", _SPIN])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()
