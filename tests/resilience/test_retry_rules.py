"""Which errors are retried, and how long the backoff is (pure rules)."""

import pytest

from snakepit import (
    CircuitOpen,
    PoolSaturated,
    QueueTimeout,
    RemoteError,
    RetryPolicy,
    WorkerCrashed,
    WorkerTimeout,
)
from snakepit.resilience.retry import is_retryable, retry_delay


@pytest.mark.parametrize(("error", "idempotent", "expected"), [
    (PoolSaturated("full", retry_after=0.1), False, True),
    (QueueTimeout("late"), False, True),
    (WorkerCrashed("died"), False, False),
    (WorkerCrashed("died"), True, True),
    (WorkerTimeout("slow"), True, False),
    (RemoteError("ValueError", "bad"), True, False),
    (CircuitOpen("open", retry_after=1.0), True, False),
])
def test_what_is_retried(error: Exception, idempotent: bool, expected: bool) -> None:
    assert is_retryable(error, idempotent=idempotent) is expected  # type: ignore[arg-type]


def test_only_narrows_the_rule() -> None:
    crash = WorkerCrashed("died")
    assert not is_retryable(crash, idempotent=True, only=("PoolSaturated",))
    assert is_retryable(crash, idempotent=True, only=("WorkerCrashed",))
    assert not is_retryable(RemoteError("X", "y"), idempotent=True, only=("RemoteError",))


def test_backoff_is_exponential_jittered_and_capped() -> None:
    policy = RetryPolicy(backoff_initial=0.1, backoff_max=0.5, multiplier=2, jitter=0.1)
    for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        delays = [retry_delay(policy, attempt, WorkerCrashed("x")) for _ in range(100)]
        assert all(base * 0.9 <= d <= base * 1.1 for d in delays)


def test_saturation_waits_at_least_its_retry_after() -> None:
    policy = RetryPolicy(backoff_initial=0.01, jitter=0)
    assert retry_delay(policy, 1, PoolSaturated("full", retry_after=0.7)) == 0.7
