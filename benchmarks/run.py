"""``python benchmarks/run.py [options]``: the side-by-side benchmarks, saved here.

A thin wrapper around :func:`snakepit.benchmarking.main` (also ``snakepit bench`` and
``nox -s bench``) that keeps the results in ``benchmarks/results/``. ``--help`` lists
the options; ``--quick`` checks that everything runs in a few seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

from snakepit.benchmarking import main

if __name__ == "__main__":
    sys.exit(main(["--output", str(Path(__file__).parent / "results"), *sys.argv[1:]]))
