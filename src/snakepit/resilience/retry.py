"""Which failed calls to retry, and after how long."""

from __future__ import annotations

import random

from snakepit.config import RetryPolicy
from snakepit.errors import CircuitOpen, PoolSaturated, SnakepitError, WorkerCrashed

_random = random.Random()


def is_retryable(error: SnakepitError, *, idempotent: bool,
                 only: tuple[str, ...] | None = None) -> bool:
    """Whether ``error`` may be retried automatically.

    Errors marked ``retryable`` (the call never ran), and ``WorkerCrashed`` when the
    caller declared the call idempotent (running it twice is harmless); narrowed to the
    class names in ``only`` when given. Never ``CircuitOpen``: retrying it would only
    hammer the open circuit.
    """
    if isinstance(error, CircuitOpen):
        return False
    if only is not None and not any(cls.__name__ in only for cls in type(error).__mro__):
        return False
    return error.retryable or (idempotent and isinstance(error, WorkerCrashed))


def retry_delay(policy: RetryPolicy, attempt: int, error: SnakepitError) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential, jittered, and never
    less than a ``PoolSaturated``'s own ``retry_after``."""
    base = min(policy.backoff_max, policy.backoff_initial * policy.multiplier ** (attempt - 1))
    delay = base * _random.uniform(1 - policy.jitter, 1 + policy.jitter)
    if isinstance(error, PoolSaturated):
        delay = max(delay, error.retry_after)
    return float(delay)
