"""Targets for the enhanced bridge's timeout tests (imported by workers)."""

from __future__ import annotations

import time
from typing import Any


def with_timeout(value: Any, timeout: float | None = None) -> dict[str, Any]:
    """Echo ``value`` and the ``timeout`` keyword the target received."""
    return {"value": value, "timeout": timeout}


def nap(seconds: float) -> float:
    """Sleep, then return how long."""
    time.sleep(seconds)
    return seconds
