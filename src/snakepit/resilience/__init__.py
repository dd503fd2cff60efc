"""Retry with backoff, and the circuit breaker."""
