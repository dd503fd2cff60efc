"""Where the tracer and the meter come from: the global providers, looked up lazily.

An application usually sets its SDK providers (``trace.set_tracer_provider``,
``metrics.set_meter_provider``) at start-up, which may well be after snakepit loaded
this plugin. So nothing is fetched at import: each event asks for the current provider
(one function call) and the tracer and instruments are made again only when it changed.
:func:`configure` can name providers instead of the global ones.
"""

from __future__ import annotations

import importlib.metadata

import attrs
from opentelemetry import metrics, trace

from snakepit.errors import ConfigError
from snakepit.telemetry import MAX_COMMAND_LABELS, CommandLabels

__all__ = ["DURATION_BUCKETS", "MAX_COMMAND_LABELS", "MAX_OPEN_SPANS", "SCOPE", "Instruments",
           "Providers", "configure", "providers"]

SCOPE = "snakepit_otel"
"""The instrumentation scope of every span and instrument."""

try:
    VERSION = importlib.metadata.version("snakepit-otel")
except importlib.metadata.PackageNotFoundError:  # run from a source tree
    VERSION = "0"

#: Calls still open (a ``call.start`` seen, no end yet) beyond which the oldest is ended.
MAX_OPEN_SPANS = 10_000

#: Seconds: from an echo (~100 µs) to a model call (minutes); the SDK's default buckets
#: (0..10000) suit milliseconds.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@attrs.frozen
class Instruments:
    """The metric instruments of one meter."""

    calls: metrics.Counter
    duration: metrics.Histogram
    queue_wait: metrics.Histogram

    @classmethod
    def of(cls, meter: metrics.Meter) -> Instruments:
        return cls(
            calls=meter.create_counter(
                "snakepit.calls", unit="{call}",
                description="Calls finished, by outcome (ok or error); streams included."),
            duration=meter.create_histogram(
                "snakepit.call.duration", unit="s",
                description="Submission to result or failure, queue wait and retries "
                            "included.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS),
            queue_wait=meter.create_histogram(
                "snakepit.call.queue_wait", unit="s",
                description="Submission until the last attempt's worker was acquired.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS))


@attrs.define
class Providers:
    """The providers in use: explicit ones from :func:`configure`, else the global ones."""

    tracer_provider: trace.TracerProvider | None = None
    meter_provider: metrics.MeterProvider | None = None
    max_open_spans: int = MAX_OPEN_SPANS
    commands: CommandLabels = attrs.field(factory=CommandLabels)
    """The ``snakepit.command`` values of metrics and span names: bounded per pool."""
    _tracer_from: object = None
    _tracer: trace.Tracer | None = None
    _meter_from: object = None
    _instruments: Instruments | None = None

    def tracer(self) -> trace.Tracer:
        """The tracer of the current provider (made again when the provider changed)."""
        provider = self.tracer_provider or trace.get_tracer_provider()
        if provider is not self._tracer_from or self._tracer is None:
            self._tracer = provider.get_tracer(SCOPE, VERSION)
            self._tracer_from = provider
        return self._tracer

    def instruments(self) -> Instruments:
        """The instruments of the current meter provider (made again when it changed)."""
        provider = self.meter_provider or metrics.get_meter_provider()
        if provider is not self._meter_from or self._instruments is None:
            self._instruments = Instruments.of(provider.get_meter(SCOPE, VERSION))
            self._meter_from = provider
        return self._instruments


providers = Providers()
"""What the plugin uses; :func:`configure` changes it."""


def configure(*, tracer_provider: trace.TracerProvider | None = None,
              meter_provider: metrics.MeterProvider | None = None,
              max_open_spans: int = MAX_OPEN_SPANS,
              max_commands: int = MAX_COMMAND_LABELS) -> None:
    """Choose the providers the plugin reports to, how many calls it tracks at once, and
    how many command names it labels.

    Each call sets all four; ``configure()`` with no arguments restores the defaults.

    Args:
        tracer_provider: spans go to this provider; None (the default): to the global
            one (``opentelemetry.trace.get_tracer_provider()``), looked up at each call.
        meter_provider: the same for metrics (``opentelemetry.metrics``).
        max_open_spans: call spans kept open waiting for their call's end; past it the
            oldest is ended at once, marked ``snakepit.incomplete``, so a lost end can
            never make the table grow without bound.
        max_commands: distinct ``snakepit.command`` values per pool, in metric
            attributes and span names; later names share ``"<other>"``, and calls
            refused as unknown commands share ``"<unknown>"`` (the name asked for stays
            on the span as ``snakepit.command.requested``). Each value is a set of
            metric streams the SDK keeps for the life of the process.

    Raises:
        snakepit.ConfigError: ``max_open_spans`` or ``max_commands`` is not an integer
            >= 1.
    """
    errors = [f"{name}: must be an integer >= 1 (got {bound!r})"
              for name, bound in (("max_open_spans", max_open_spans),
                                  ("max_commands", max_commands))
              if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1]
    if errors:
        raise ConfigError(errors)
    providers.tracer_provider = tracer_provider
    providers.meter_provider = meter_provider
    providers.max_open_spans = max_open_spans
    if max_commands != providers.commands.max_commands:
        providers.commands = CommandLabels(max_commands)
