"""The circuit breaker: closed, open (fail fast), half-open (one probe), closed again.

Pure logic on an injected clock, so its timing is tested on a mock clock; the pool
calls :meth:`CircuitBreaker.before` ahead of each attempt and :meth:`after` with its
outcome. State changes are reported through ``on_change`` (the pool turns them into
telemetry events).
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from snakepit.config import CircuitBreakerPolicy
from snakepit.errors import CircuitOpen, SnakepitError

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Circuit:
    """One circuit (a pool's, or one command's)."""

    __slots__ = ("failures", "opened_at", "probing", "state")

    def __init__(self) -> None:
        self.state = CLOSED
        self.failures: collections.deque[float] = collections.deque()
        self.opened_at = 0.0
        self.probing = False


class CircuitBreaker:
    """The circuits of one pool."""

    def __init__(self, policy: CircuitBreakerPolicy, clock: Callable[[], float],
                 on_change: Callable[[str, str], None]) -> None:
        self.policy = policy
        self._clock = clock
        self._on_change = on_change
        self._circuits: dict[str, Circuit] = {}

    def _key(self, command: str) -> str:
        return command if self.policy.per_command else "*"

    def state(self, command: str = "*") -> str:
        """The state of the circuit ``command`` goes through."""
        circuit = self._circuits.get(self._key(command))
        return circuit.state if circuit is not None else CLOSED

    def _set(self, key: str, circuit: Circuit, state: str) -> None:
        circuit.state = state
        self._on_change(key, state)

    def before(self, command: str) -> None:
        """Let a call through, or raise :class:`CircuitOpen`.

        An open circuit past its ``reset_timeout`` turns half-open and lets exactly one
        probe through; calls during the probe fail fast.
        """
        key = self._key(command)
        circuit = self._circuits.get(key)
        if circuit is None or circuit.state == CLOSED:
            return
        now = self._clock()
        if circuit.state == OPEN:
            remaining = circuit.opened_at + self.policy.reset_timeout - now
            if remaining > 0:
                raise CircuitOpen(f"circuit {key!r} is open after repeated failures",
                                  retry_after=remaining)
            self._set(key, circuit, HALF_OPEN)
        if circuit.probing:
            raise CircuitOpen(f"circuit {key!r} is half-open: a probe call is running",
                              retry_after=self.policy.reset_timeout)
        circuit.probing = True

    def after(self, command: str, error: SnakepitError | None) -> None:
        """Record an attempt's outcome (``None``: success)."""
        key = self._key(command)
        failed = error is not None and any(
            cls.__name__ in self.policy.failures for cls in type(error).__mro__)
        circuit = self._circuits.get(key)
        if circuit is None:
            if not failed:
                return
            circuit = self._circuits[key] = Circuit()
        was_probe, circuit.probing = circuit.probing, False
        now = self._clock()
        if not failed:
            if circuit.state != CLOSED and was_probe:
                circuit.failures.clear()
                self._set(key, circuit, CLOSED)
            return
        if circuit.state == HALF_OPEN:
            circuit.opened_at = now
            self._set(key, circuit, OPEN)
            return
        failures = circuit.failures
        failures.append(now)
        while failures and failures[0] <= now - self.policy.window:
            failures.popleft()
        if circuit.state == CLOSED and len(failures) >= self.policy.failure_threshold:
            circuit.opened_at = now
            self._set(key, circuit, OPEN)
