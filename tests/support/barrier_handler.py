"""A handler whose workers each wait, at start-up, until all N have started.

If the pool started workers one after another, the first would wait forever and the
pool would hit its startup timeout: so a pool that opens proves concurrent start.
"""

import os
import time
from pathlib import Path

from snakepit.bridge import CommandHandler


class BarrierHandler(CommandHandler):
    def __init__(self) -> None:
        super().__init__()
        directory = Path(os.environ["BARRIER_DIR"])
        expected = int(os.environ["BARRIER_N"])
        (directory / str(os.getpid())).touch()
        deadline = time.monotonic() + 30
        while len(list(directory.iterdir())) < expected:
            if time.monotonic() > deadline:
                raise SystemExit("barrier: the other workers never started")
            time.sleep(0.005)


class BrokenImportHandler(CommandHandler):
    def __init__(self) -> None:
        raise RuntimeError("this handler cannot be constructed: missing API key")


from snakepit.testing import ChaosHandler  # noqa: E402


class ThreadedChaosHandler(ChaosHandler):
    """ChaosHandler running four calls at once (threads): ids multiplex on one pipe."""

    concurrency = 4
