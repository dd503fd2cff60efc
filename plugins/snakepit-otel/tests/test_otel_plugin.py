"""The OpenTelemetry exporter, installed through its entry point, recorded by the SDK's
in-memory exporter and reader while real pools serve calls."""

import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

import snakepit
import snakepit_otel
from snakepit.plugins import installed_plugins

HERE = Path(__file__).parent


def pool_config(name: str, **overrides: Any) -> snakepit.PoolConfig:
    options: dict[str, Any] = {
        "size": 1, "name": name, "handler": "snakepit.testing:ChaosHandler",
        "restart": snakepit.RestartPolicy(backoff_initial=0.01, backoff_max=0.05)}
    return snakepit.PoolConfig(**{**options, **overrides})


@attrs.frozen
class Recorded:
    """What the SDK recorded, and the application's tracer."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    app: Tracer
    pool: str = attrs.field(factory=lambda: f"otel-{uuid.uuid4().hex[:8]}")

    def calls(self) -> list[ReadableSpan]:
        """The call spans of this test's pool, in the order they ended."""
        return [span for span in self.spans.get_finished_spans()
                if span.attributes and span.attributes.get("snakepit.pool") == self.pool
                and span.name.startswith("snakepit.call ")]

    def children(self, parent: ReadableSpan) -> dict[str, ReadableSpan]:
        found = [span for span in self.spans.get_finished_spans()
                 if span.parent is not None and span.parent.span_id == parent.context.span_id]
        assert len({span.name for span in found}) == len(found)
        return {span.name: span for span in found}

    def points(self, metric: str) -> list[Any]:
        """This pool's data points of ``metric``."""
        data = self.reader.get_metrics_data()
        assert data is not None
        return [point for resource in data.resource_metrics for scope in resource.scope_metrics
                for found in scope.metrics if found.name == metric
                for point in found.data.data_points
                if (point.attributes or {}).get("snakepit.pool") == self.pool]


@pytest.fixture
def otel() -> Iterator[Recorded]:
    """SDK providers for the plugin (through ``configure``, so the process's global
    providers stay untouched for the other tests)."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    snakepit_otel.configure(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield Recorded(exporter, reader, tracer_provider, meter_provider,
                       tracer_provider.get_tracer("app"))
    finally:
        snakepit_otel.configure()
        tracer_provider.shutdown()
        meter_provider.shutdown()


def test_found_through_its_entry_point() -> None:
    found = [p for p in installed_plugins() if p.distribution == "snakepit-otel"]
    assert [(p.group, p.hooks, p.error) for p in found] == [
        ("snakepit.telemetry", ("snakepit_telemetry_event",), None)]


async def test_a_call_is_a_span_under_the_callers_span(otel: Recorded) -> None:
    async with snakepit.open_pool(pool_config(otel.pool)) as pool:
        with otel.app.start_as_current_span("request") as request:
            assert await pool.execute("echo", 7) == 7
    [call] = otel.calls()
    assert call.name == "snakepit.call echo"
    assert call.parent is not None and call.parent.span_id == request.get_span_context().span_id
    assert call.context.trace_id == request.get_span_context().trace_id
    assert call.status.status_code is StatusCode.UNSET
    attributes = dict(call.attributes or {})
    assert attributes["snakepit.command"] == "echo"
    assert attributes["snakepit.worker"] == f"{otel.pool}-0"
    assert attributes["snakepit.attempts"] == 1
    assert isinstance(attributes["snakepit.call.id"], int)
    assert isinstance(attributes["snakepit.queue_wait"], float)
    assert attributes["snakepit.queue_wait"] >= 0
    children = otel.children(call)
    assert sorted(children) == ["snakepit.execute", "snakepit.queue"]
    queue, execute = children["snakepit.queue"], children["snakepit.execute"]
    assert execute.kind is SpanKind.CLIENT
    assert execute.attributes == {"snakepit.worker": f"{otel.pool}-0"}
    assert call.start_time == queue.start_time
    assert queue.end_time == execute.start_time
    assert execute.end_time == call.end_time
    assert all(span.context.trace_id == call.context.trace_id for span in (queue, execute))


async def test_errors_are_recorded(otel: Recorded) -> None:
    # one worker holding one call at a time
    async with snakepit.open_pool(pool_config(otel.pool, pipeline_depth=1)) as pool:
        with pytest.raises(snakepit.RemoteError):
            await pool.execute("raise", {"message": "boom"})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.execute, "nap", {"seconds": 60})
            await trio.testing.wait_all_tasks_blocked()  # the nap holds the only worker
            with pytest.raises(snakepit.QueueTimeout):
                await pool.execute("echo", 1, timeout=0.2)
            nursery.cancel_scope.cancel()
    remote, queued, cancelled = otel.calls()
    for span, error in ((remote, "RemoteError"), (queued, "QueueTimeout")):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == error
        assert span.attributes is not None and span.attributes["error.type"] == error
        [event] = span.events
        assert event.name == "exception"
        assert event.attributes == {"exception.type": error}
    assert remote.name == "snakepit.call raise" and cancelled.name == "snakepit.call nap"
    # a call its caller cancelled is no error (issue 21: client churn fired error alerts)
    assert cancelled.status.status_code is StatusCode.UNSET
    assert cancelled.attributes is not None and cancelled.attributes["snakepit.cancelled"]
    assert "error.type" not in cancelled.attributes and not cancelled.events
    assert otel.children(cancelled)["snakepit.execute"].status.status_code is StatusCode.UNSET
    outcomes = sorted(p.attributes["snakepit.outcome"] for p in otel.points("snakepit.calls"))
    assert outcomes == ["cancelled", "error", "error"]  # RemoteError, QueueTimeout
    remote_execute = otel.children(remote)["snakepit.execute"]
    assert remote_execute.status.status_code is StatusCode.ERROR
    # the timed-out call never reached a worker: it only queued
    assert queued.attributes is not None and "snakepit.worker" not in queued.attributes
    assert list(otel.children(queued)) == ["snakepit.queue"]
    assert otel.children(queued)["snakepit.queue"].end_time == queued.end_time


async def test_a_retry_is_an_event_on_the_calls_span(otel: Recorded, tmp_path: Path) -> None:
    retry = snakepit.RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.05)
    async with snakepit.open_pool(pool_config(otel.pool, retry=retry)) as pool:
        args = {"path": str(tmp_path / "count"), "failures": 1}
        assert await pool.execute("flaky", args, idempotent=True) == 1
    [call] = otel.calls()
    assert call.attributes is not None and call.attributes["snakepit.attempts"] == 2
    [event] = call.events
    assert event.name == "snakepit.retry"
    assert event.attributes is not None
    assert event.attributes["snakepit.attempt"] == 1
    assert event.attributes["error.type"] == "WorkerCrashed"
    assert call.status.status_code is StatusCode.UNSET


async def test_a_stream_is_a_call_span(otel: Recorded) -> None:
    async with snakepit.open_pool(pool_config(otel.pool)) as pool:
        async with pool.stream("count", {"n": 3}) as chunks:
            assert [chunk async for chunk in chunks] == [0, 1, 2]
    [call] = otel.calls()
    assert call.name == "snakepit.call count"
    assert call.attributes is not None
    assert call.attributes["snakepit.stream"] is True and call.attributes["snakepit.chunks"] == 3
    assert sorted(otel.children(call)) == ["snakepit.execute", "snakepit.queue"]


async def test_call_metrics(otel: Recorded) -> None:
    async with snakepit.open_pool(pool_config(otel.pool, size=2)) as pool:
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(pool.execute, "echo", i)
        with pytest.raises(snakepit.RemoteError):
            await pool.execute("raise")
    calls = {(p.attributes["snakepit.outcome"], p.attributes.get("error.type")): p.value
             for p in otel.points("snakepit.calls")}
    assert calls == {("ok", None): 4, ("error", "RemoteError"): 1}
    for histogram in ("snakepit.call.duration", "snakepit.call.queue_wait"):
        counts = {p.attributes["snakepit.outcome"]: p.count for p in otel.points(histogram)}
        assert counts == {"ok": 4, "error": 1}
    [ok] = [p for p in otel.points("snakepit.call.duration")
            if p.attributes["snakepit.outcome"] == "ok"]
    assert ok.explicit_bounds[0] == snakepit_otel.DURATION_BUCKETS[0] and ok.sum > 0


async def test_open_spans_are_bounded(otel: Recorded) -> None:
    snakepit_otel.configure(tracer_provider=otel.tracer_provider,
                            meter_provider=otel.meter_provider, max_open_spans=2)
    before = snakepit_otel.open_calls()
    async with snakepit.open_pool(pool_config(otel.pool)) as pool:
        async with trio.open_nursery() as nursery:
            for _ in range(3):  # one runs, two wait: three calls open at once
                nursery.start_soon(pool.execute, "nap", {"seconds": 60})
            await trio.testing.wait_all_tasks_blocked()
            assert snakepit_otel.open_calls() == 2
            [evicted] = otel.calls()
            assert evicted.attributes is not None
            assert evicted.attributes["snakepit.incomplete"] is True
            nursery.cancel_scope.cancel()
    assert snakepit_otel.open_calls() == before
    first, *others = otel.calls()
    assert first.context == evicted.context  # ended once, never again
    assert [(span.status.status_code, (span.attributes or {}).get("snakepit.cancelled"))
            for span in others] == [(StatusCode.UNSET, True)] * 2
    # the evicted call's end still counts in the metrics
    assert sum(p.value for p in otel.points("snakepit.calls")) == 3


def test_configure_refuses_a_bad_bound() -> None:
    for bound in (0, -1, 1.5, True):
        with pytest.raises(snakepit.ConfigError, match="max_open_spans: must be an integer"):
            snakepit_otel.configure(max_open_spans=bound)  # type: ignore[arg-type]


async def test_the_global_providers_are_looked_up_lazily() -> None:
    result = await trio.run_process([sys.executable, str(HERE / "global_provider_script.py")],
                                    capture_stdout=True)
    report = json.loads(result.stdout)
    assert report["open_before"] == 0
    assert report["names"] == ["request", "snakepit.call echo", "snakepit.execute",
                               "snakepit.queue"]
    assert report["call_parent_is_request"] is True
    assert report["calls"] == [1]  # the call made before the provider was set went nowhere


async def test_the_readme_example_runs() -> None:
    readme = (HERE.parent / "README.md").read_text()
    [example] = re.findall(r"^```python\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)
    result = await trio.run_process([sys.executable, "-c", example], capture_stdout=True)
    assert result.stdout.decode().splitlines() == [
        "request", "  snakepit.call echo", "    snakepit.queue", "    snakepit.execute"]


async def test_unknown_commands_share_one_attribute(otel: Recorded) -> None:
    """Every name the worker refuses used to become metric streams of its own, kept for
    the life of the process."""
    async with snakepit.open_pool(pool_config(otel.pool)) as pool:
        assert await pool.execute("echo", 1) == 1
        for i in range(2000):
            with pytest.raises(snakepit.UnknownCommand):
                await pool.execute(f"no-such-command-{i}")
    for metric in ("snakepit.calls", "snakepit.call.duration", "snakepit.call.queue_wait"):
        commands = sorted(p.attributes["snakepit.command"] for p in otel.points(metric))
        assert commands == ["<unknown>", "echo"], metric
    [refused] = [p for p in otel.points("snakepit.calls")
                 if p.attributes["snakepit.command"] == "<unknown>"]
    assert refused.value == 2000 and refused.attributes["error.type"] == "UnknownCommand"
    echo, *unknown = otel.calls()
    assert echo.name == "snakepit.call echo"
    assert {span.name for span in unknown} == {"snakepit.call <unknown>"}
    last = dict(unknown[-1].attributes or {})
    assert last["snakepit.command"] == "<unknown>"
    assert last["snakepit.command.requested"] == "no-such-command-1999"


async def test_distinct_commands_are_capped_per_pool(otel: Recorded) -> None:
    from snakepit_otel._plugin import snakepit_telemetry_event

    snakepit_otel.configure(tracer_provider=otel.tracer_provider,
                            meter_provider=otel.meter_provider, max_commands=3)
    # a real pool: three commands keep their names, the fourth is past the cap
    async with snakepit.open_pool(pool_config(otel.pool)) as pool:
        for command in ("echo", "ping", "info"):
            await pool.execute(command, {} if command != "echo" else 1)
        async with pool.stream("count", {"n": 2}) as chunks:
            assert [chunk async for chunk in chunks] == [0, 1]
    *_, streamed = otel.calls()
    assert streamed.name == "snakepit.call <other>"
    assert streamed.attributes is not None
    assert streamed.attributes["snakepit.command.requested"] == "count"
    # thousands of names, as the events of calls that succeeded
    for i in range(3000):
        snakepit_telemetry_event("call.stop", {"duration": 0.001, "queue_wait": 0.0},
                                 {"pool": otel.pool, "command": f"generated-{i}",
                                  "call": None})
    commands = sorted(p.attributes["snakepit.command"]
                      for p in otel.points("snakepit.calls"))
    assert commands == ["<other>", "echo", "info", "ping"]
    [other] = [p for p in otel.points("snakepit.calls")
               if p.attributes["snakepit.command"] == "<other>"]
    assert other.value == 3001


def test_configure_refuses_a_bad_command_bound() -> None:
    for bound in (0, -1, 1.5, True):
        with pytest.raises(snakepit.ConfigError, match="max_commands: must be an integer"):
            snakepit_otel.configure(max_commands=bound)  # type: ignore[arg-type]
    assert snakepit_otel.MAX_COMMAND_LABELS == 100
