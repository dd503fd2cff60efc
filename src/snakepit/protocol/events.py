"""Bounds on the telemetry events handlers send with ``ctx.emit`` (standard library only).

Both sides apply them: the worker raises ``ValueError`` at once for an event that
breaks them (the handler's author sees the mistake where it is made); the host checks
again, since any program may speak the wire, drops what breaks them and counts it. The
host also bounds the *rate* per worker (:data:`MAX_EVENTS_PER_SECOND`, with a burst of
as many): a handler that emits in a tight loop cannot flood the host's listeners.
"""

from __future__ import annotations

import re
from typing import Any

#: ``worker.<name>``: lower-case words separated by dots or underscores.
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,3}")
MAX_NAME = 64
"""Characters in an event name (before the ``worker.`` prefix)."""
MAX_KEYS = 32
"""Keys in each of ``measurements`` and ``metadata``."""
MAX_KEY = 64
"""Characters in a key."""
MAX_TEXT = 1024
"""Characters in a metadata string value."""
MAX_EVENTS_PER_SECOND = 1000.0
"""Events the host accepts from one worker per second (the burst is as large)."""
RESERVED = frozenset({"started", "ready", "exited", "restarted", "unhealthy", "info",
                      "stats", "stderr", "setup_failed"})
"""Names whose ``worker.<name>`` the host emits itself (a worker cannot impersonate them)."""


def check_event(event: Any, measurements: Any, metadata: Any) -> str | None:
    """Why the event may not be sent (a sentence), or ``None`` when it may.

    ``measurements`` maps names to numbers; ``metadata`` maps names to strings,
    numbers, booleans or ``None``; either may be ``None`` (empty).
    """
    if not isinstance(event, str) or len(event) > MAX_NAME or NAME.fullmatch(event) is None:
        return (f"event name {event!r:.80} must be dot-separated lower-case words "
                f"(letters, digits, _), at most {MAX_NAME} characters")
    if event in RESERVED:
        return f"event name {event!r} is reserved for the host's own worker.{event} event"
    for label, values, check in (("measurements", measurements, _number),
                                 ("metadata", metadata, _scalar)):
        if values is None:
            continue
        if not isinstance(values, dict):
            return f"{label} must be a dict, got {type(values).__name__}"
        if len(values) > MAX_KEYS:
            return f"{label} has {len(values)} keys, at most {MAX_KEYS} are allowed"
        for key, value in values.items():
            if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
                return f"{label} keys must be strings of 1 to {MAX_KEY} characters: {key!r:.80}"
            if not check(value):
                return f"{label}[{key!r}] has an unsupported value {value!r:.80}"
    return None


def _number(value: Any) -> bool:
    return type(value) in (int, float) and value == value  # not NaN, not bool


def _scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    return value is None or type(value) in (int, float, bool)


class RateLimit:
    """A token bucket: ``rate`` events a second, bursts of up to ``rate``."""

    __slots__ = ("_at", "_tokens", "dropped", "rate")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._at = now
        self.dropped = 0
        """Events refused since the bucket was made."""

    def take(self, now: float) -> bool:
        """Whether one more event may pass at time ``now`` (seconds)."""
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.dropped += 1
        return False
