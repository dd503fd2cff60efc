"""The policies a pool applies when things fail: restarts, retries, the circuit breaker.

Frozen attrs classes, validated like every configuration class (all bad fields at once).
"""

from __future__ import annotations

import attrs

from snakepit._checks import (
    at_least,
    building,
    error_names,
    is_number,
    must,
    optional,
    positive,
    to_tuple,
    validate,
)

__all__ = ["CircuitBreakerPolicy", "RestartPolicy", "RetryPolicy"]


_COUNT = must(at_least(0, integer=True), "must be an integer >= 0")
_SECONDS = must(positive, "must be a finite number > 0")
_DELAY = must(at_least(0), "must be a finite number >= 0")
_JITTER = must(lambda v: is_number(v) and 0 <= v <= 1, "must be a number between 0 and 1")
_COOLDOWN = must(optional(positive), "must be a finite number > 0, or None")


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """How a worker slot is restarted after its worker dies unexpectedly."""

    max_restarts: int = attrs.field(default=5, validator=_COUNT)
    """Restart intensity: more than this many restarts within ``period`` seconds mark
    the slot failed instead of restarting it forever."""
    period: float = attrs.field(default=60.0, validator=_SECONDS)
    """Window, in seconds, over which ``max_restarts`` is counted."""
    backoff_initial: float = attrs.field(default=0.05, validator=_DELAY)
    """Delay before the first restart; doubles on each consecutive failure to start (or
    death before the worker was sent any call). A worker that was sent calls started
    healthily: its crash restarts the count, so it is replaced after this delay."""
    backoff_max: float = attrs.field(default=5.0, validator=_DELAY)
    """Ceiling of the exponential backoff."""
    jitter: float = attrs.field(default=0.2, validator=_JITTER)
    """Each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""
    cooldown: float | None = attrs.field(default=30.0, validator=_COOLDOWN)
    """Seconds a failed slot waits before it tries again with a fresh intensity window
    (``PoolBroken`` says when, as ``retry_after``); ``None``: failed until the pool
    closes."""

    __attrs_pre_init__ = building
    __attrs_post_init__ = validate


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Automatic retries of failed calls, within the call's one deadline.

    Only errors marked ``retryable`` are retried (``PoolSaturated``: after at least its
    ``retry_after``), and ``WorkerCrashed`` only for calls made with
    ``idempotent=True``. ``CircuitOpen`` is never retried automatically.
    """

    max_attempts: int = attrs.field(default=3, validator=must(at_least(1, integer=True),
                                                             "must be an integer >= 1"))
    """Attempts in all, the first included (1: no retries)."""
    backoff_initial: float = attrs.field(default=0.05, validator=_DELAY)
    """Delay before the second attempt, in seconds."""
    backoff_max: float = attrs.field(default=2.0, validator=_DELAY)
    """Ceiling of the delay."""
    multiplier: float = attrs.field(default=2.0, validator=must(at_least(1),
                                                               "must be a finite number >= 1"))
    """Each further delay is this many times the previous one."""
    jitter: float = attrs.field(default=0.2, validator=_JITTER)
    """Each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""
    only: tuple[str, ...] | None = attrs.field(
        default=None, converter=to_tuple,
        validator=error_names("error class names", allow_none=True))
    """Error class names to retry, narrowing the rule above (``None``: all it allows);
    each must name a class of ``snakepit.errors`` (a typo would retry nothing)."""

    __attrs_pre_init__ = building
    __attrs_post_init__ = validate


@attrs.frozen(kw_only=True)
class CircuitBreakerPolicy:
    """Fail fast while workers keep failing, instead of queueing calls into the fire."""

    failure_threshold: int = attrs.field(default=5, validator=must(at_least(1, integer=True),
                                                                  "must be an integer >= 1"))
    """Failures within ``window`` that open the circuit."""
    window: float = attrs.field(default=10.0, validator=_SECONDS)
    """Seconds over which failures are counted."""
    reset_timeout: float = attrs.field(default=5.0, validator=_SECONDS)
    """Seconds the circuit stays open before one probe call may go through."""
    per_command: bool = attrs.field(default=False, validator=must(
        lambda v: isinstance(v, bool), "must be true or false"))
    """One circuit per command name instead of one for the whole pool."""
    failures: tuple[str, ...] = attrs.field(
        default=("WorkerCrashed", "WorkerTimeout", "ProtocolError", "WorkerStartupError"),
        converter=to_tuple, validator=error_names("error class names"))
    """Names of the error classes that count as failures (subclasses count too), each a
    class of ``snakepit.errors`` (a typo would leave the circuit closed for good). A
    handler's own exception (``RemoteError``) and load (``PoolSaturated``,
    ``QueueTimeout``) do not, by default."""

    __attrs_pre_init__ = building
    __attrs_post_init__ = validate
