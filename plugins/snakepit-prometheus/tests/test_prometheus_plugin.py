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


def series_of(text: str, pool: str) -> list[tuple[str, dict[str, str]]]:
    """Every sample of ``pool`` in an exposition: its name and labels."""
    return [(sample.name, sample.labels) for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.labels.get("pool") == pool]


async def test_unknown_commands_share_one_label(
        server: snakepit_prometheus.MetricsServer) -> None:
    """5,000 names the worker refuses used to add 46 series each, for good."""
    name = unique_pool_name()
    async with snakepit.open_pool(size=1, name=name, handler=CHAOS,
                                  health_check_interval=None) as pool:
        await pool.execute("echo", 1)

        async def refused(command: str) -> None:
            with pytest.raises(snakepit.UnknownCommand):
                await pool.execute(command)

        await refused("no-such-command-0")
        one = series_of(await scrape(server), name)
        for i in range(1, 5000):
            await refused(f"no-such-command-{i}")
        text = await scrape(server)
    assert series_of(text, name) == one
    assert {labels.get("command") for _, labels in one} == {"echo", "<unknown>", None}
    assert value(text, "snakepit_calls_total", pool=name, command="<unknown>",
                 outcome="error") == 5000
    assert value(text, "snakepit_call_errors_total", pool=name, command="<unknown>",
                 error="UnknownCommand") == 5000
    assert len(series_of(text, name)) < 100


def test_distinct_command_labels_are_capped_per_pool() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from snakepit_prometheus._metrics import TelemetryMetrics

    exporter = TelemetryMetrics(CollectorRegistry(), max_commands=10)
    for pool in ("a", "b"):
        for i in range(3000):
            exporter.observe("call.stop", {"duration": 0.001, "queue_wait": 0.0},
                             {"pool": pool, "command": f"command-{i}"})
        exporter.observe("call.exception", {"duration": 0.001, "queue_wait": 0.0},
                         {"pool": pool, "command": "command-0", "error": "RemoteError"})
        exporter.observe("call.retry", {"attempt": 1, "delay": 0.1},
                         {"pool": pool, "command": "command-2999",
                          "error": "WorkerCrashed"})
    text = generate_latest(exporter.registry).decode()
    for pool in ("a", "b"):  # each pool its own ten, then the rest as one
        commands = {labels["command"] for _, labels in series_of(text, pool)}
        assert commands == {*(f"command-{i}" for i in range(10)), "<other>"}
        assert value(text, "snakepit_calls_total", pool=pool, command="<other>",
                     outcome="ok") == 2990
        assert value(text, "snakepit_calls_total", pool=pool, command="command-0",
                     outcome="error") == 1
        assert value(text, "snakepit_call_retries_total", pool=pool, command="<other>",
                     error="WorkerCrashed") == 1
    # 2 pools x 11 labels, each a fixed set of series: the count no longer grows with names
    assert len(series_of(text, "a")) == len(series_of(text, "b")) <= 11 * 46


def test_a_pool_opened_again_under_its_name_gets_its_gauges_back() -> None:
    # the per-call metrics keep their labelled children (labels() is the exporter's
    # dearest step); a stopped pool's removed gauge must not stay cached
    from prometheus_client import CollectorRegistry, generate_latest

    from snakepit_prometheus._metrics import TelemetryMetrics

    exporter = TelemetryMetrics(CollectorRegistry())
    for round_ in (1, 2):
        exporter.observe("call.start", {"queue_depth": 3 + round_}, {"pool": "p"})
        exporter.observe("call.stop", {"duration": 0.001, "queue_wait": 0.0},
                         {"pool": "p", "command": "echo"})
        text = generate_latest(exporter.registry).decode()
        assert value(text, "snakepit_queue_depth", pool="p") == 3 + round_
        assert value(text, "snakepit_calls_total", pool="p", command="echo",
                     outcome="ok") == round_  # counters go on accumulating
        exporter.observe("pool.stopped", {}, {"pool": "p"})
        text = generate_latest(exporter.registry).decode()
        assert value(text, "snakepit_queue_depth", pool="p") is None


async def test_the_cap_comes_from_the_environment() -> None:
    script = ("import logging; logging.basicConfig(); "
              "from snakepit_prometheus._metrics import metrics; "
              "print(metrics.commands.max_commands)")

    async def cap(value: str | None) -> tuple[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "SNAKEPIT_PROMETHEUS_MAX_COMMANDS"}
        if value is not None:
            env["SNAKEPIT_PROMETHEUS_MAX_COMMANDS"] = value
        done = await trio.run_process([sys.executable, "-c", script], env=env,
                                      capture_stdout=True, capture_stderr=True)
        return done.stdout.decode().strip(), done.stderr.decode()

    assert (await cap(None))[0] == "100"
    assert (await cap("7"))[0] == "7"
    printed, logged = await cap("lots")
    assert printed == "100"
    assert "ignoring SNAKEPIT_PROMETHEUS_MAX_COMMANDS='lots'" in logged
