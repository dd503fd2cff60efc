"""pool.call in OpenTelemetry: a span named by target, and no span for releases."""

import gc
import uuid
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import snakepit
import snakepit_otel


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    snakepit_otel.configure(tracer_provider=provider)
    try:
        yield exporter
    finally:
        snakepit_otel.configure()
        provider.shutdown()


async def test_call_spans_are_named_by_target_and_releases_make_none(
        spans: InMemorySpanExporter) -> None:
    name = f"otel-dyn-{uuid.uuid4().hex[:8]}"
    config = snakepit.PoolConfig(size=1, name=name, allowed_targets=("json", "fractions"),
                                 handler="snakepit.bridge.enhanced:EnhancedHandler")
    async with snakepit.open_pool(config) as pool:
        await pool.call("json.dumps", [1])
        ref = await pool.call("fractions.Fraction", 1, 3)
        del ref
        gc.collect()  # its release is due as the pool closes
    ours = [span for span in spans.get_finished_spans()
            if span.attributes and span.attributes.get("snakepit.pool") == name
            and span.name.startswith("snakepit.call ")]
    assert [span.name for span in ours] == ["snakepit.call call:json.dumps",
                                            "snakepit.call call:fractions.Fraction"]
    assert all(span.status.is_ok for span in ours)
