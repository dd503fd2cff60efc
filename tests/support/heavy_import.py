"""A module that is slow to import and counts its imports (the fork-server tests).

Each import appends the importing process's pid to the file named by
``SNAKEPIT_TEST_IMPORT_LOG``, then sleeps as a heavy library's import would.
"""

import os
import time

_log = os.environ.get("SNAKEPIT_TEST_IMPORT_LOG")
if _log:
    with open(_log, "a") as file:
        file.write(f"{os.getpid()}\n")
time.sleep(0.2)
