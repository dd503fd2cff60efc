"""The policies a pool applies when things fail: restarts, retries, the circuit breaker.

Frozen attrs classes, validated like every configuration class (all bad fields at once).
"""

from __future__ import annotations

import math

import attrs

from snakepit._checks import (
    Check,
    _at_least,
    _is_number,
    _optional,
    _positive,
    _run_checks,
    _tuple_or_none,
)

__all__ = ["CircuitBreakerPolicy", "RestartPolicy", "RetryPolicy"]


_RESTART_CHECKS: list[Check] = [
        ("max_restarts", _at_least(0, integer=True), "must be an integer >= 0"),
        ("period", _positive, "must be a number > 0"),
        ("backoff_initial", _at_least(0), "must be a number >= 0"),
        ("backoff_max", _at_least(0), "must be a number >= 0"),
        ("jitter", lambda v: _is_number(v) and 0 <= v <= 1, "must be between 0 and 1"),
        ("cooldown", _optional(lambda v: _positive(v) and v < math.inf),
         "must be a finite number > 0, or None"),
]


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """How a worker slot is restarted after its worker dies unexpectedly."""

    max_restarts: int = 5
    """Restart intensity: more than this many restarts within ``period`` seconds mark
    the slot failed instead of restarting it forever."""
    period: float = 60.0
    """Window, in seconds, over which ``max_restarts`` is counted."""
    backoff_initial: float = 0.05
    """Delay before the first restart; doubles on each consecutive failure to start (or
    death before the worker was sent any call). A worker that was sent calls started
    healthily: its crash restarts the count, so it is replaced after this delay."""
    backoff_max: float = 5.0
    """Ceiling of the exponential backoff."""
    jitter: float = 0.2
    """Each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""
    cooldown: float | None = 30.0
    """Seconds a failed slot waits before it tries again with a fresh intensity window
    (``PoolBroken`` says when, as ``retry_after``); ``None``: failed until the pool
    closes."""

    def __attrs_post_init__(self) -> None:
        _run_checks(self, _RESTART_CHECKS)


_RETRY_CHECKS: list[Check] = [
    ("max_attempts", _at_least(1, integer=True), "must be an integer >= 1"),
    ("backoff_initial", _at_least(0), "must be a number >= 0"),
    ("backoff_max", _at_least(0), "must be a number >= 0"),
    ("multiplier", _at_least(1), "must be a number >= 1"),
    ("jitter", lambda v: _is_number(v) and 0 <= v <= 1, "must be between 0 and 1"),
    ("only", lambda v: v is None or all(isinstance(n, str) for n in v),
     "must be a list of error class names or None"),
]


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Automatic retries of failed calls, within the call's one deadline.

    Only errors marked ``retryable`` are retried (``PoolSaturated``: after at least its
    ``retry_after``), and ``WorkerCrashed`` only for calls made with
    ``idempotent=True``. ``CircuitOpen`` is never retried automatically.
    """

    max_attempts: int = 3
    """Attempts in all, the first included (1: no retries)."""
    backoff_initial: float = 0.05
    """Delay before the second attempt, in seconds."""
    backoff_max: float = 2.0
    """Ceiling of the delay."""
    multiplier: float = 2.0
    """Each further delay is this many times the previous one."""
    jitter: float = 0.2
    """Each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""
    only: tuple[str, ...] | None = attrs.field(default=None, converter=_tuple_or_none)
    """Error class names to retry, narrowing the rule above (``None``: all it allows)."""

    def __attrs_post_init__(self) -> None:
        _run_checks(self, _RETRY_CHECKS)


_BREAKER_CHECKS: list[Check] = [
    ("failure_threshold", _at_least(1, integer=True), "must be an integer >= 1"),
    ("window", _positive, "must be a number > 0"),
    ("reset_timeout", _positive, "must be a number > 0"),
    ("per_command", lambda v: isinstance(v, bool), "must be true or false"),
    ("failures", lambda v: isinstance(v, tuple) and all(isinstance(n, str) for n in v),
     "must be a list of error class names"),
]


@attrs.frozen(kw_only=True)
class CircuitBreakerPolicy:
    """Fail fast while workers keep failing, instead of queueing calls into the fire."""

    failure_threshold: int = 5
    """Failures within ``window`` that open the circuit."""
    window: float = 10.0
    """Seconds over which failures are counted."""
    reset_timeout: float = 5.0
    """Seconds the circuit stays open before one probe call may go through."""
    per_command: bool = False
    """One circuit per command name instead of one for the whole pool."""
    failures: tuple[str, ...] = attrs.field(
        default=("WorkerCrashed", "WorkerTimeout", "ProtocolError", "WorkerStartupError"),
        converter=tuple)
    """Names of the error classes that count as failures (subclasses count too). A
    handler's own exception (``RemoteError``) and load (``PoolSaturated``,
    ``QueueTimeout``) do not, by default."""

    def __attrs_post_init__(self) -> None:
        _run_checks(self, _BREAKER_CHECKS)
