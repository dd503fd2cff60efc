"""snakepit telemetry for Prometheus: call, queue and worker metrics, scraped over HTTP.

Installed, the plugin hears every telemetry event through the ``snakepit.telemetry``
entry point and keeps the metrics in :data:`REGISTRY`, a registry of its own. It serves
them only when asked:

- ``SNAKEPIT_PROMETHEUS_PORT`` (and optionally ``SNAKEPIT_PROMETHEUS_ADDR``, default
  ``127.0.0.1``) in the environment: a server starts when the first event arrives;
- or :func:`serve` from the application's code.

Without either it only collects: installing it never opens a port. The metrics are
listed in the README (``snakepit_calls_total``, ``snakepit_call_duration_seconds``,
``snakepit_workers``, ...).
"""

from __future__ import annotations

from snakepit_prometheus._metrics import LATENCY_BUCKETS, MAX_COMMANDS_VARIABLE, REGISTRY
from snakepit_prometheus._server import (
    ADDR_VARIABLE,
    PORT_VARIABLE,
    MetricsServer,
    serve,
    servers,
)

__all__ = ["ADDR_VARIABLE", "LATENCY_BUCKETS", "MAX_COMMANDS_VARIABLE", "PORT_VARIABLE",
           "REGISTRY", "MetricsServer", "serve", "servers"]
