"""Crash and restart log lines, rate-limited so that a crash storm cannot flood a log.

A worker crash is logged at WARNING and a restart at INFO on the ``snakepit.supervisor``
logger. Each pool shares one :class:`RateLimitedLog` among its slots: at most
``burst`` lines per ``period`` seconds (10 per minute by default); past that, lines are
counted instead of written, and the next line written after the window has passed says
how many were suppressed. A slot that fails for good, and the pool breaking and coming
back, are logged apart (ERROR / WARNING): they happen at most a few times per window.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import trio

__all__ = ["RateLimitedLog", "describe_exit"]

BURST = 10
"""Lines a pool writes per :data:`PERIOD` about crashes and restarts."""
PERIOD = 60.0
"""Seconds over which :data:`BURST` is counted."""


class RateLimitedLog:
    """At most ``burst`` records per ``period`` seconds (on Trio's clock) to ``logger``."""

    def __init__(self, logger: logging.Logger, *, burst: int = BURST,
                 period: float = PERIOD) -> None:
        self.logger = logger
        self.burst = burst
        self.period = period
        self._window_start: float | None = None
        self._written = 0
        self.suppressed = 0
        """Records dropped in the current window (reported when the next one opens)."""

    def log(self, level: int, message: str, *args: Any) -> bool:
        """Log ``message % args`` at ``level`` unless this window's budget is spent.

        Returns whether the record was written (or would have been: a disabled level
        costs no budget).
        """
        if not self.logger.isEnabledFor(level):
            return True
        now = trio.current_time()
        if self._window_start is None or now - self._window_start >= self.period:
            if self.suppressed:
                self.logger.warning("%d more crash and restart messages were suppressed "
                                    "in the last %.0fs", self.suppressed, self.period)
            self._window_start, self._written, self.suppressed = now, 0, 0
        if self._written >= self.burst:
            self.suppressed += 1
            return False
        self._written += 1
        self.logger.log(level, message, *args)
        return True


def describe_exit(code: int | None) -> str:
    """``"exit code 3"``, ``"killed by SIGKILL"``, or ``"exit status unknown"``."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
