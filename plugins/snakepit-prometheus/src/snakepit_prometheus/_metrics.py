"""The metrics, and how each telemetry event updates them.

Every metric lives in one dedicated :class:`~prometheus_client.CollectorRegistry`, not
in prometheus-client's global default, so snakepit's series never collide with an
application's own; an application that wants them on its own endpoint registers
:data:`REGISTRY` in its registry (a registry is a collector too).

Updating a metric takes a lock private to that metric for a few microseconds (the HTTP
thread holds it as briefly while it reads the value), so handlers stay quick in the
Trio task that emits the event.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from snakepit.telemetry import CANCELLED_ERRORS, MAX_COMMAND_LABELS, CommandLabels

__all__ = ["LATENCY_BUCKETS", "MAX_COMMANDS_VARIABLE", "REGISTRY", "TelemetryMetrics",
           "metrics"]

log = logging.getLogger("snakepit_prometheus")

#: The environment variable that sets how many command names get a label of their own.
MAX_COMMANDS_VARIABLE = "SNAKEPIT_PROMETHEUS_MAX_COMMANDS"

#: Seconds. Calls to a warm worker take from ~100 µs (an echo) to minutes (a model), so
#: the buckets span both ends more finely than prometheus-client's defaults (5 ms..10 s).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))

#: The registry that holds every snakepit metric (and nothing else).
REGISTRY = CollectorRegistry(auto_describe=True)

#: ``pool.health`` measurements exported as ``snakepit_workers{state=...}``.
WORKER_STATES = ("available", "busy", "starting", "failed")


class TelemetryMetrics:
    """The snakepit metrics in one registry, updated from telemetry events.

    Label sets stay small: ``pool`` is chosen by the application; ``command`` is
    bounded (:class:`snakepit.telemetry.CommandLabels`: calls refused as unknown share
    ``"<unknown>"``, and past ``max_commands`` names per pool the rest share
    ``"<other>"``), since callers choose command names; ``worker`` is a slot id
    (``"<pool>-<n>"``, stable across restarts, so bounded by the pool's size), ``error``
    an exception class name.
    """

    def __init__(self, registry: CollectorRegistry, *,
                 max_commands: int = MAX_COMMAND_LABELS) -> None:
        self.registry = registry
        self.commands = CommandLabels(max_commands)
        self.calls = Counter(
            "snakepit_calls", "Calls finished, by outcome (ok, error, or cancelled by their "
            "caller); streams included.",
            ["pool", "command", "outcome"], registry=registry)
        self.errors = Counter(
            "snakepit_call_errors", "Calls that raised, by the exception's class name "
            "(cancelled calls are not errors).",
            ["pool", "command", "error"], registry=registry)
        self.retries = Counter(
            "snakepit_call_retries", "Failed attempts that the retry policy retried.",
            ["pool", "command", "error"], registry=registry)
        self.duration = Histogram(
            "snakepit_call_duration_seconds",
            "Submission to result or failure, queue wait and retries included.",
            ["pool", "command"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_wait = Histogram(
            "snakepit_call_queue_wait_seconds",
            "Submission until the last attempt's worker was acquired.",
            ["pool", "command"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge(
            "snakepit_queue_depth", "Calls waiting for a worker (at the last call or health "
            "round).", ["pool"], registry=registry)
        self.workers = Gauge(
            "snakepit_workers", "Workers by state at the last health round: available "
            "(ready, idle), busy, starting, failed.", ["pool", "state"], registry=registry)
        self.size = Gauge(
            "snakepit_pool_size", "The pool's configured size (workers).", ["pool"],
            registry=registry)
        self.restarts = Counter(
            "snakepit_worker_restarts", "Replacement workers started; on_purpose: the "
            "previous one was recycled or stopped by the host.", ["pool", "on_purpose"],
            registry=registry)
        self.exits = Counter(
            "snakepit_worker_exits", "Worker processes that exited, for any reason.",
            ["pool", "on_purpose"], registry=registry)
        self.unhealthy = Counter(
            "snakepit_worker_unhealthy", "Workers found unhealthy, by reason.",
            ["pool", "reason"], registry=registry)
        self.rss = Gauge(
            "snakepit_worker_rss_bytes", "A worker's resident memory at the last health "
            "round (0 when unreadable).", ["pool", "worker"], registry=registry)
        self.in_flight = Gauge(
            "snakepit_worker_calls_in_flight", "A worker's calls in flight at the last "
            "health round.", ["pool", "worker"], registry=registry)
        self._workers_seen: dict[str, set[str]] = {}
        # Labelled children of the per-call metrics, by their labels: ``labels()``
        # costs a microsecond or more each, four times a call. Bounded as the labels
        # are (pools, the bounded command names, three outcomes).
        self._call_children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
        self._depth_children: dict[str, Any] = {}
        self._handlers: dict[str, Callable[[Mapping[str, float], Mapping[str, Any]], None]] = {
            "call.start": self._call_start,
            "call.stop": self._call_stop,
            "call.exception": self._call_exception,
            "call.retry": self._call_retry,
            "pool.health": self._pool_health,
            "pool.started": self._pool_started,
            "pool.stopped": self._pool_stopped,
            "worker.stats": self._worker_stats,
            "worker.restarted": self._worker_restarted,
            "worker.exited": self._worker_exited,
            "worker.unhealthy": self._worker_unhealthy,
        }

    def observe(self, event: str, measurements: Mapping[str, float],
                metadata: Mapping[str, Any]) -> None:
        """Update the metrics from one telemetry event (others are ignored)."""
        handler = self._handlers.get(event)
        if handler is not None:
            handler(measurements, metadata)

    # -- calls ---------------------------------------------------------------------------
    def _call_start(self, measurements: Mapping[str, float],
                    metadata: Mapping[str, Any]) -> None:
        pool = metadata["pool"]
        gauge = self._depth_children.get(pool)
        if gauge is None:
            gauge = self._depth_children[pool] = self.queue_depth.labels(pool)
        gauge.set(measurements.get("queue_depth", 0))

    def _finished(self, outcome: str, measurements: Mapping[str, float],
                  metadata: Mapping[str, Any], error: str | None = None) -> tuple[str, str]:
        pool = metadata["pool"]
        command = self.commands.label(pool, str(metadata.get("command")), error)
        children = self._call_children.get((pool, command, outcome))
        if children is None:
            children = self._call_children[pool, command, outcome] = (
                self.calls.labels(pool, command, outcome),
                self.duration.labels(pool, command), self.queue_wait.labels(pool, command))
        calls, duration, queue_wait = children
        calls.inc()
        duration.observe(measurements.get("duration", 0.0))
        queue_wait.observe(measurements.get("queue_wait", 0.0))
        return pool, command

    def _call_stop(self, measurements: Mapping[str, float],
                   metadata: Mapping[str, Any]) -> None:
        self._finished("ok", measurements, metadata)

    def _call_exception(self, measurements: Mapping[str, float],
                        metadata: Mapping[str, Any]) -> None:
        error = str(metadata.get("error"))
        if error in CANCELLED_ERRORS:  # the caller went away: churn, not a failure
            self._finished("cancelled", measurements, metadata, error)
            return
        pool, command = self._finished("error", measurements, metadata, error)
        self.errors.labels(pool, command, error).inc()

    def _call_retry(self, measurements: Mapping[str, float],
                    metadata: Mapping[str, Any]) -> None:
        pool, error = metadata["pool"], str(metadata.get("error"))
        self.retries.labels(pool, self.commands.label(pool, str(metadata.get("command")),
                                                      error), error).inc()

    # -- pools and workers ---------------------------------------------------------------
    def _pool_started(self, measurements: Mapping[str, float],
                      metadata: Mapping[str, Any]) -> None:
        self.size.labels(metadata["pool"]).set(measurements.get("size", 0))

    def _pool_health(self, measurements: Mapping[str, float],
                     metadata: Mapping[str, Any]) -> None:
        pool = metadata["pool"]
        for state in WORKER_STATES:
            self.workers.labels(pool, state).set(measurements.get(state, 0))
        self.size.labels(pool).set(measurements.get("total", 0))
        self.queue_depth.labels(pool).set(measurements.get("queue_depth", 0))

    def _pool_stopped(self, measurements: Mapping[str, float],
                      metadata: Mapping[str, Any]) -> None:
        """A stopped pool has no workers and no queue: drop its gauges, so a scrape
        shows no stale values (its counters and histograms go on accumulating if a pool
        of the same name opens again)."""
        pool = metadata["pool"]
        for worker in self._workers_seen.pop(pool, set()):
            self.rss.remove(pool, worker)
            self.in_flight.remove(pool, worker)
        for state in WORKER_STATES:
            self.workers.remove(pool, state)
        self.size.remove(pool)
        self.queue_depth.remove(pool)
        self._depth_children.pop(pool, None)  # a new child if the pool opens again

    def _worker_stats(self, measurements: Mapping[str, float],
                      metadata: Mapping[str, Any]) -> None:
        pool, worker = metadata["pool"], str(metadata.get("worker"))
        self._workers_seen.setdefault(pool, set()).add(worker)
        self.rss.labels(pool, worker).set(measurements.get("rss", 0))
        self.in_flight.labels(pool, worker).set(measurements.get("in_flight", 0))

    def _worker_restarted(self, measurements: Mapping[str, float],
                          metadata: Mapping[str, Any]) -> None:
        self.restarts.labels(metadata["pool"], _flag(metadata.get("on_purpose"))).inc()

    def _worker_exited(self, measurements: Mapping[str, float],
                       metadata: Mapping[str, Any]) -> None:
        self.exits.labels(metadata["pool"], _flag(metadata.get("on_purpose"))).inc()

    def _worker_unhealthy(self, measurements: Mapping[str, float],
                          metadata: Mapping[str, Any]) -> None:
        self.unhealthy.labels(metadata["pool"], str(metadata.get("reason"))).inc()


def _flag(value: object) -> str:
    return "true" if value else "false"


def max_commands_from_environment() -> int:
    """``$SNAKEPIT_PROMETHEUS_MAX_COMMANDS`` (a whole number >= 1), else the default."""
    raw = os.environ.get(MAX_COMMANDS_VARIABLE)
    if raw is None:
        return MAX_COMMAND_LABELS
    if raw.strip().isdigit() and int(raw) >= 1:
        return int(raw)
    log.warning("ignoring %s=%r: must be a whole number >= 1; using %d",
                MAX_COMMANDS_VARIABLE, raw, MAX_COMMAND_LABELS)
    return MAX_COMMAND_LABELS


metrics = TelemetryMetrics(REGISTRY, max_commands=max_commands_from_environment())
"""The process-wide metrics the plugin updates (the variable is read when the plugin
loads: when snakepit opens its first pool)."""
