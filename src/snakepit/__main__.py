"""``python -m snakepit``: the same as the ``snakepit`` command."""

import sys

from snakepit.cli import main

sys.exit(main())
