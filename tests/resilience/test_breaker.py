"""The circuit breaker's state machine, on a clock the test moves."""

import pytest

from snakepit import CircuitBreakerPolicy, CircuitOpen, RemoteError, WorkerCrashed
from snakepit.errors import WorkerTimeout
from snakepit.resilience.breaker import CircuitBreaker


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(**policy: object) -> tuple[CircuitBreaker, Clock, list[tuple[str, str]]]:
    clock, changes = Clock(), []
    options = {"failure_threshold": 3, "window": 10.0, "reset_timeout": 5.0, **policy}
    made = CircuitBreaker(CircuitBreakerPolicy(**options), clock,  # type: ignore[arg-type]
                          lambda key, state: changes.append((key, state)))
    return made, clock, changes


def fail(b: CircuitBreaker, command: str = "cmd", error: Exception | None = None) -> None:
    b.before(command)
    b.after(command, error or WorkerCrashed("boom"))  # type: ignore[arg-type]


def test_opens_after_threshold_fails_fast_then_probes_and_closes() -> None:
    b, clock, changes = breaker()
    for _ in range(3):
        fail(b)
    assert b.state() == "open" and changes == [("*", "open")]
    clock.now = 2.0
    with pytest.raises(CircuitOpen) as info:
        b.before("cmd")
    assert info.value.retry_after == pytest.approx(3.0) and info.value.retryable
    clock.now = 5.0  # reset_timeout passed: one probe goes through
    b.before("cmd")
    assert b.state() == "half_open"
    with pytest.raises(CircuitOpen, match="probe"):
        b.before("cmd")  # only one probe at a time
    b.after("cmd", None)
    assert b.state() == "closed"
    assert changes == [("*", "open"), ("*", "half_open"), ("*", "closed")]
    b.before("cmd")  # closed: calls flow
    b.after("cmd", None)


def test_a_failed_probe_opens_it_again() -> None:
    b, clock, changes = breaker(failure_threshold=1)
    fail(b)
    clock.now = 6.0
    fail(b)  # the probe fails
    assert b.state() == "open"
    with pytest.raises(CircuitOpen) as info:
        b.before("cmd")
    assert info.value.retry_after == pytest.approx(5.0)
    assert [state for _, state in changes] == ["open", "half_open", "open"]


def test_failures_outside_the_window_do_not_add_up() -> None:
    b, clock, _ = breaker()
    for at in (0.0, 6.0, 12.0, 18.0):  # never three within ten seconds
        clock.now = at
        fail(b)
    assert b.state() == "closed"


def test_only_configured_failures_count() -> None:
    b, _, _ = breaker(failure_threshold=1)
    fail(b, error=RemoteError("ValueError", "the handler's own error"))
    assert b.state() == "closed"
    fail(b, error=WorkerTimeout("slow"))
    assert b.state() == "open"


def test_per_command_circuits_are_independent() -> None:
    b, _, changes = breaker(failure_threshold=1, per_command=True)
    fail(b, "train")
    assert b.state("train") == "open" and b.state("predict") == "closed"
    b.before("predict")
    assert changes == [("train", "open")]
