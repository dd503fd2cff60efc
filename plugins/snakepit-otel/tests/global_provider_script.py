"""Sets the global OpenTelemetry providers *after* a pool has run calls, then prints,
as JSON, what the plugin reported (used by ``test_otel_plugin.py``: the global
providers can be set once per process, so this runs in a process of its own)."""

import json

import trio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import snakepit
import snakepit_otel


async def main() -> None:
    config = snakepit.PoolConfig(size=1, name="late", handler="snakepit.testing:ChaosHandler")
    async with snakepit.open_pool(config) as pool:
        await pool.execute("echo", "before any provider")  # the API's no-op: nothing kept
        open_before = snakepit_otel.open_calls()
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(tracer_provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        with trace.get_tracer("app").start_as_current_span("request"):
            await pool.execute("echo", "after")
    spans = {span.name: span for span in exporter.get_finished_spans()}
    call = spans["snakepit.call echo"]
    calls = [point.value for resource in reader.get_metrics_data().resource_metrics
             for scope in resource.scope_metrics for metric in scope.metrics
             if metric.name == "snakepit.calls" for point in metric.data.data_points]
    print(json.dumps({
        "open_before": open_before,
        "names": sorted(spans),
        "call_parent_is_request": call.parent is not None
        and call.parent.span_id == spans["request"].context.span_id,
        "calls": calls,
    }))


trio.run(main)
