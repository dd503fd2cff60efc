"""A ChaosHandler that cannot start while an outage lasts: a stand-in for a driver
being reloaded or a full disk.

While the file named by ``SNAKEPIT_TEST_OUTAGE`` exists, constructing the handler
exits the worker before its handshake, so the host sees a real failed start.
"""

import os
import sys

from snakepit.testing import ChaosHandler

OUTAGE_ENV = "SNAKEPIT_TEST_OUTAGE"


class OutageHandler(ChaosHandler):
    def __init__(self) -> None:
        flag = os.environ.get(OUTAGE_ENV)
        if flag and os.path.exists(flag):
            sys.exit(f"outage: {flag} exists")
        super().__init__()
