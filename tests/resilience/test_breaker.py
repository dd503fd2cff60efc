"""The circuit breaker's state machine, on trio's MockClock (moved by the test)."""

import pytest
from trio.testing import MockClock

from snakepit import (
    CircuitBreakerPolicy,
    CircuitOpen,
    PoolClosed,
    PoolSaturated,
    QueueTimeout,
    RemoteError,
    WorkerCrashed,
)
from snakepit.errors import WorkerTimeout
from snakepit.resilience.breaker import CircuitBreaker


def breaker(**policy: object) -> tuple[CircuitBreaker, MockClock, list[tuple[str, str]]]:
    clock, changes = MockClock(), []
    options = {"failure_threshold": 3, "window": 10.0, "reset_timeout": 5.0, **policy}
    made = CircuitBreaker(CircuitBreakerPolicy(**options),  # type: ignore[arg-type]
                          clock.current_time, lambda key, state: changes.append((key, state)))
    return made, clock, changes


def fail(b: CircuitBreaker, command: str = "cmd", error: Exception | None = None) -> None:
    probe = b.before(command)
    b.after(command, error or WorkerCrashed("boom"), probe=probe)


def opened(b: CircuitBreaker, clock: MockClock) -> None:
    """Open ``b`` (threshold 1) and let its reset timeout pass: the next call probes."""
    fail(b)
    assert b.state() == "open"
    clock.jump(b.policy.reset_timeout)


def test_opens_after_threshold_fails_fast_then_probes_and_closes() -> None:
    b, clock, changes = breaker()
    for _ in range(3):
        fail(b)
    assert b.state() == "open" and changes == [("*", "open")]
    clock.jump(2.0)
    with pytest.raises(CircuitOpen) as info:
        b.before("cmd")
    assert info.value.retry_after == pytest.approx(3.0) and info.value.retryable
    clock.jump(3.0)  # reset_timeout passed: one probe goes through
    assert b.before("cmd") is True
    assert b.state() == "half_open"
    with pytest.raises(CircuitOpen, match="probe"):
        b.before("cmd")  # only one probe at a time
    b.after("cmd", None, probe=True)
    assert b.state() == "closed"
    assert changes == [("*", "open"), ("*", "half_open"), ("*", "closed")]
    assert b.before("cmd") is False  # closed: calls flow, none of them a probe
    b.after("cmd", None, probe=False)


def test_a_failed_probe_opens_it_again() -> None:
    b, clock, changes = breaker(failure_threshold=1)
    fail(b)
    clock.jump(6.0)
    fail(b)  # the probe fails
    assert b.state() == "open"
    with pytest.raises(CircuitOpen) as info:
        b.before("cmd")
    assert info.value.retry_after == pytest.approx(5.0)
    assert [state for _, state in changes] == ["open", "half_open", "open"]


@pytest.mark.parametrize("ending", [KeyboardInterrupt(), GeneratorExit()],
                         ids=["interrupt", "base-exception"])
def test_a_probe_ended_by_a_base_exception_lets_the_next_call_probe(
        ending: BaseException) -> None:
    b, clock, changes = breaker(failure_threshold=1)
    opened(b, clock)
    assert b.before("cmd") is True
    b.after("cmd", ending, probe=True)  # what the pool does when the probe is cancelled
    assert b.state() == "half_open"
    assert b.before("cmd") is True  # not "a probe call is running" forever
    b.after("cmd", None, probe=True)
    assert b.state() == "closed"
    assert [state for _, state in changes] == ["open", "half_open", "closed"]


@pytest.mark.parametrize("error", [QueueTimeout("no worker in time"),
                                   PoolSaturated("full", retry_after=1.0),
                                   PoolClosed("closing")],
                         ids=lambda e: type(e).__name__)
def test_a_probe_that_never_reached_a_worker_is_no_verdict(error: Exception) -> None:
    b, clock, changes = breaker(failure_threshold=1)
    opened(b, clock)
    assert b.before("cmd") is True
    b.after("cmd", error, probe=True)
    assert b.state() == "half_open"  # not closed: no worker answered
    assert b.before("cmd") is True  # the next call is the probe...
    b.after("cmd", WorkerCrashed("boom"), probe=True)  # ...and its failure reopens it
    assert [state for _, state in changes] == ["open", "half_open", "open"]


def test_a_probe_answered_with_a_handler_error_closes_it() -> None:
    b, clock, _ = breaker(failure_threshold=1)
    opened(b, clock)
    b.after("cmd", RemoteError("ValueError", "bad input"), probe=b.before("cmd"))
    assert b.state() == "closed"  # a worker answered: the workers are back


def test_only_the_probe_decides_a_half_open_circuit() -> None:
    b, clock, changes = breaker(failure_threshold=1)
    opened(b, clock)
    assert b.before("cmd") is True
    # a call let through before the circuit opened ends now: no say, and the probe
    # it does not own stays running
    b.after("cmd", None, probe=False)
    b.after("cmd", KeyboardInterrupt(), probe=False)
    assert b.state() == "half_open"
    with pytest.raises(CircuitOpen, match="probe"):
        b.before("cmd")
    b.after("cmd", None, probe=True)
    assert [state for _, state in changes] == ["open", "half_open", "closed"]


def test_failures_outside_the_window_do_not_add_up() -> None:
    b, clock, _ = breaker()
    for _ in range(4):  # never three within ten seconds
        fail(b)
        clock.jump(6.0)
    assert b.state() == "closed"


def test_only_configured_failures_count() -> None:
    b, _, _ = breaker(failure_threshold=1)
    fail(b, error=RemoteError("ValueError", "the handler's own error"))
    fail(b, error=QueueTimeout("load"))
    assert b.state() == "closed"
    fail(b, error=WorkerTimeout("slow"))
    assert b.state() == "open"


def test_per_command_circuits_are_independent() -> None:
    b, _, changes = breaker(failure_threshold=1, per_command=True)
    fail(b, "train")
    assert b.state("train") == "open" and b.state("predict") == "closed"
    assert b.before("predict") is False
    assert changes == [("train", "open")]
