"""The circuit breaker: closed, open (fail fast), half-open (one probe), closed again.

Pure logic on an injected clock, so its timing is tested on a mock clock; the pool
calls :meth:`CircuitBreaker.before` ahead of each attempt and :meth:`after` with its
outcome, whatever it is (a cancellation included). State changes are reported through
``on_change`` (the pool turns them into telemetry events).

Only a worker's answer is a verdict on the workers: a result or a handler's error
(:class:`~snakepit.RemoteError`) is a success, an error named in the policy's
``failures`` a failure. Anything else -- the caller cancelled, the call never reached a
worker (``QueueTimeout``, ``PoolSaturated``, ``PoolClosed``) -- says nothing about
them: a probe that ends so leaves the circuit half-open for the next call to probe.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from snakepit.config import CircuitBreakerPolicy
from snakepit.errors import CircuitOpen, RemoteError

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

    def before(self, command: str) -> bool:
        """Let a call through, or raise :class:`CircuitOpen`.

        An open circuit past its ``reset_timeout`` turns half-open and lets exactly one
        probe through; calls during the probe fail fast.

        Returns:
            True when this call is the probe; pass it back to :meth:`after`.
        """
        key = self._key(command)
        circuit = self._circuits.get(key)
        if circuit is None or circuit.state == CLOSED:
            return False
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
        return True

    def failed(self, error: BaseException) -> bool:
        """Whether ``error`` counts as a failure of the workers (the policy's
        ``failures``, subclasses included)."""
        return any(cls.__name__ in self.policy.failures for cls in type(error).__mro__)

    def after(self, command: str, error: BaseException | None, *, probe: bool) -> None:
        """Record an attempt's outcome: ``None`` (a result) or the exception it ended
        with, of any kind (a cancellation too); ``probe`` is what :meth:`before` said.

        A failure counts towards opening the circuit, and a failed probe opens it
        again. A probe that a worker answered closes it. An outcome that is neither
        only ends the probe: the next call probes again.
        """
        key = self._key(command)
        circuit = self._circuits.get(key)
        if probe and circuit is not None:
            circuit.probing = False
        if error is not None and self.failed(error):
            if circuit is None:
                circuit = self._circuits[key] = Circuit()
            now = self._clock()
            if circuit.state == HALF_OPEN and probe:
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
            return
        answered = error is None or isinstance(error, RemoteError)
        if probe and answered and circuit is not None and circuit.state == HALF_OPEN:
            circuit.failures.clear()
            self._set(key, circuit, CLOSED)
