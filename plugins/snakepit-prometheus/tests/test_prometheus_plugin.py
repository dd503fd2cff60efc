"""The Prometheus exporter, installed through its entry point, scraped over loopback."""

import json
import os
import re
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import snakepit
import snakepit_prometheus
from snakepit import telemetry
from snakepit.plugins import installed_plugins

HERE = Path(__file__).parent
CHAOS = "snakepit.testing:ChaosHandler"


def unique_pool_name() -> str:
    """Metrics live as long as the process: each test counts its own pool's."""
    return f"prom-{uuid.uuid4().hex[:8]}"


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}`` of an exposition (None when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        body: bytes = response.read()
        return body.decode()


async def scrape(server: snakepit_prometheus.MetricsServer) -> str:
    return await trio.to_thread.run_sync(fetch, server.url)


@pytest.fixture
def server() -> Iterator[snakepit_prometheus.MetricsServer]:
    running = snakepit_prometheus.serve(0)  # the system picks a free port
    yield running
    running.close()


async def next_health_round(pool_name: str) -> None:
    """Return once ``pool_name`` has reported a health round (the metrics hear the same
    event in the same emit, before this task can run again)."""
    round_done = trio.Event()

    def on_health(event: str, measurements: Any, metadata: Any) -> None:
        if metadata["pool"] == pool_name:
            round_done.set()

    handler = telemetry.attach("pool.health", on_health)
    try:
        await round_done.wait()
    finally:
        telemetry.detach(handler)


def test_found_through_its_entry_point() -> None:
    found = [p for p in installed_plugins() if p.distribution == "snakepit-prometheus"]
    assert [(p.group, p.hooks, p.error) for p in found] == [
        ("snakepit.telemetry", ("snakepit_telemetry_event",), None)]


async def test_a_scrape_shows_what_a_live_pool_did(
        server: snakepit_prometheus.MetricsServer) -> None:
    assert server.addr == "127.0.0.1" and server.port > 0
    name = unique_pool_name()
    config = snakepit.PoolConfig(size=2, name=name, handler=CHAOS, health_check_interval=0.05,
                                 restart=snakepit.RestartPolicy(backoff_initial=0.01,
                                                                backoff_max=0.05))
    async with snakepit.open_pool(config) as pool:
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(pool.execute, "echo", i)
        with pytest.raises(snakepit.RemoteError):
            await pool.execute("raise")
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("crash")
        await pool.wait_ready()
        await next_health_round(name)
        text = await scrape(server)

        def sample(metric: str, **labels: str) -> float | None:
            return value(text, metric, pool=name, **labels)

        assert sample("snakepit_calls_total", command="echo", outcome="ok") == 5
        assert sample("snakepit_calls_total", command="echo", outcome="error") is None
        assert sample("snakepit_calls_total", command="raise", outcome="error") == 1
        assert sample("snakepit_call_errors_total", command="raise", error="RemoteError") == 1
        assert sample("snakepit_call_errors_total", command="crash", error="WorkerCrashed") == 1
        for histogram in ("snakepit_call_duration_seconds", "snakepit_call_queue_wait_seconds"):
            assert sample(f"{histogram}_count", command="echo") == 5
            assert sample(f"{histogram}_bucket", command="echo", le="+Inf") == 5
            assert sample(f"{histogram}_count", command="raise") == 1
        durations = sample("snakepit_call_duration_seconds_sum", command="echo")
        waits = sample("snakepit_call_queue_wait_seconds_sum", command="echo")
        assert durations is not None and waits is not None and durations >= waits >= 0
        # the health round after the calls: both workers back, ready and idle
        assert sample("snakepit_workers", state="available") == 2
        assert sample("snakepit_workers", state="busy") == 0
        assert sample("snakepit_workers", state="starting") == 0
        assert sample("snakepit_workers", state="failed") == 0
        assert sample("snakepit_pool_size") == 2
        assert sample("snakepit_queue_depth") == 0
        assert sample("snakepit_worker_restarts_total", on_purpose="false") == 1
        for worker in (f"{name}-0", f"{name}-1"):
            rss = sample("snakepit_worker_rss_bytes", worker=worker)
            assert rss is not None and rss > 1_000_000  # a Python process: megabytes
            assert sample("snakepit_worker_calls_in_flight", worker=worker) == 0

    after = await scrape(server)
    assert value(after, "snakepit_calls_total", pool=name, command="echo", outcome="ok") == 5
    assert value(after, "snakepit_workers", pool=name, state="available") is None
    assert value(after, "snakepit_worker_rss_bytes", pool=name, worker=f"{name}-0") is None


def test_serve_refuses_a_bad_port() -> None:
    for port in (-1, 65536, "9464", True):
        with pytest.raises(snakepit.ConfigError, match="port: must be an integer"):
            snakepit_prometheus.serve(port)  # type: ignore[arg-type]
    with pytest.raises(snakepit.ConfigError, match="addr: must be an IP address"):
        snakepit_prometheus.serve(0, addr="")


async def run_script(**environment: str) -> tuple[dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEPIT_PROMETHEUS_")}
    result = await trio.run_process([sys.executable, str(HERE / "environment_script.py")],
                                    env={**env, **environment}, capture_stdout=True,
                                    capture_stderr=True)
    return json.loads(result.stdout), result.stderr.decode()


async def test_the_environment_asks_for_a_server_on_loopback() -> None:
    report, _ = await run_script(SNAKEPIT_PROMETHEUS_PORT="0")
    [(addr, port)] = report["servers"]
    assert addr == "127.0.0.1" and report["listening"] == [port]
    assert value(report["scraped"], "snakepit_calls_total", pool="env-pool", command="echo",
                 outcome="ok") == 3


async def test_without_configuration_it_collects_and_opens_no_port() -> None:
    report, _ = await run_script()
    assert report["servers"] == [] and report["listening"] == []
    assert value(report["collected"], "snakepit_calls_total", pool="env-pool", command="echo",
                 outcome="ok") == 3


async def test_a_bad_port_in_the_environment_is_logged_and_collecting_goes_on() -> None:
    report, stderr = await run_script(SNAKEPIT_PROMETHEUS_PORT="nine")
    assert "SNAKEPIT_PROMETHEUS_PORT='nine' is not a port" in stderr
    assert report["servers"] == [] and report["listening"] == []
    assert value(report["collected"], "snakepit_calls_total", pool="env-pool", command="echo",
                 outcome="ok") == 3


async def test_the_readme_example_runs() -> None:
    readme = (HERE.parent / "README.md").read_text()
    [example] = re.findall(r"^```python\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)
    result = await trio.run_process([sys.executable, "-c", example], capture_stdout=True)
    assert result.stdout.decode().splitlines() == [
        'snakepit_calls_total{command="echo",outcome="ok",pool="general"} 10.0',
        'snakepit_call_duration_seconds_count{command="echo",pool="general"} 10.0']


async def test_cancelled_calls_are_counted_apart_from_errors() -> None:
    # Issue 21: client disconnects showed up as errors and fired failed-call alerts.
    name = unique_pool_name()
    async with snakepit.open_pool(snakepit.PoolConfig(size=1, name=name, handler=CHAOS)) as pool:
        with trio.CancelScope() as scope:  # the caller goes away once the call runs
            await pool.execute("nap", {"seconds": 60}, on_progress=lambda *_: scope.cancel())
        with pytest.raises(snakepit.RemoteError):
            await pool.execute("raise")

    def sample(metric: str, **labels: str) -> float | None:
        return snakepit_prometheus.REGISTRY.get_sample_value(metric, {"pool": name, **labels})

    assert sample("snakepit_calls_total", command="nap", outcome="cancelled") == 1
    assert sample("snakepit_calls_total", command="nap", outcome="error") is None
    assert sample("snakepit_call_errors_total", command="nap", error="Cancelled") is None
    assert sample("snakepit_calls_total", command="raise", outcome="error") == 1
