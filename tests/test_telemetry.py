"""Telemetry: events in order, handlers that fail, the pluggy hook."""

from typing import Any

import pytest
import trio

import snakepit
from snakepit import hookspecs, plugins, telemetry
from tests.conftest import chaos_config


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def __call__(self, event: str, measurements: Any, metadata: Any) -> None:
        self.events.append((event, dict(measurements), dict(metadata)))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.events]


@pytest.fixture
def log() -> Any:
    recorder = Log()
    handler = telemetry.attach("*", recorder)
    yield recorder
    telemetry.detach(handler)


async def test_lifecycle_and_call_events_in_order(log: Log) -> None:
    async with snakepit.open_pool(chaos_config(size=1, name="p")) as pool:
        await pool.execute("echo", 1)
        with pytest.raises(snakepit.RemoteError):
            await pool.execute("raise")
        async with pool.session(ttl=60) as s:
            await s.execute("incr")
    names = [n for n in log.names() if n != "pool.health"]
    assert names == [
        "worker.started", "worker.ready", "pool.started",
        "call.start", "call.stop",
        "call.start", "call.exception",
        "session.created", "call.start", "call.stop", "session.deleted",
        "worker.exited", "pool.stopped",
    ]
    by_name = {name: (m, meta) for name, m, meta in log.events}
    stop, meta = by_name["call.stop"]
    assert stop["duration"] >= stop["queue_wait"] >= 0
    assert meta["pool"] == "p" and meta["command"] == "incr" and meta["worker"] == "p-0"
    assert by_name["call.exception"][1]["error"] == "RemoteError"
    assert by_name["call.exception"][0]["queue_wait"] <= by_name["call.exception"][0]["duration"]
    assert by_name["worker.exited"][1]["exit_code"] == 0
    assert "queue_depth" in by_name["call.start"][0]


async def test_crash_and_restart_events(log: Log) -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("crash")
        await pool.wait_ready()
    names = log.names()
    exited = names.index("worker.exited")
    assert names[exited + 1:exited + 4] == ["worker.restarted", "worker.started", "worker.ready"]
    crashed = next(meta for name, _, meta in log.events if name == "worker.exited")
    assert crashed["exit_code"] == 1 and crashed["on_purpose"] is False


async def test_progress_is_an_event(log: Log) -> None:
    async with snakepit.open_pool(chaos_config(size=1)) as pool:
        await pool.execute("progress", {"steps": 2})
    progress = [(m["done"], m["total"], meta["message"])
                for name, m, meta in log.events if name == "call.progress"]
    assert progress == [(1.0, 2.0, "step 1"), (2.0, 2.0, "step 2")]


async def test_a_raising_handler_is_detached_and_never_breaks_a_call(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def broken(event: str, measurements: Any, metadata: Any) -> None:
        calls.append(event)
        raise RuntimeError("handler bug")

    handler = telemetry.attach(["call.start", "call.stop"], broken)
    try:
        async with snakepit.open_pool(size=1) as pool:
            assert await pool.execute("echo", 1) == 1
            assert await pool.execute("echo", 2) == 2
        assert calls == ["call.start"]  # detached after the first failure
        assert handler not in telemetry.telemetry.handler_ids()
        assert "handler bug" in caplog.text
    finally:
        telemetry.detach(handler)


def test_unknown_event_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown telemetry events"):
        telemetry.attach("call.stopp", lambda *_: None)


def test_every_event_is_documented() -> None:
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "telemetry.md").read_text()
    missing = [name for name in telemetry.EVENTS if f"`{name}`" not in page]
    assert not missing


class ListeningPlugin:
    def __init__(self) -> None:
        self.events: list[str] = []

    @hookspecs.hookimpl
    def snakepit_telemetry_event(self, event: str, measurements: Any, metadata: Any) -> None:
        self.events.append(event)


async def test_plugins_listen_through_the_pluggy_hook() -> None:
    plugin = ListeningPlugin()
    plugins.register_plugin(plugin, name="test-listener")
    try:
        async with snakepit.open_pool(size=1) as pool:
            await pool.execute("ping")
        assert "call.stop" in plugin.events and "pool.stopped" in plugin.events
    finally:
        plugins.unregister_plugin(plugin)
    heard = len(plugin.events)
    async with snakepit.open_pool(size=1) as pool:
        await pool.execute("ping")
    assert len(plugin.events) == heard  # unregistered: hears nothing more


class FailingPlugin:
    @hookspecs.hookimpl
    def snakepit_telemetry_event(self, event: str, measurements: Any, metadata: Any) -> None:
        raise RuntimeError("plugin bug")


async def test_a_failing_plugin_is_detached_alone(caplog: pytest.LogCaptureFixture) -> None:
    good, bad = ListeningPlugin(), FailingPlugin()
    plugins.register_plugin(bad, name="bad")
    plugins.register_plugin(good, name="good")
    try:
        async with snakepit.open_pool(size=1) as pool:
            await pool.execute("ping")
            await pool.execute("ping")
        assert good.events.count("call.stop") == 2
        # the log line names the plugin, not an internal function
        (record,) = [r for r in caplog.records if r.name == "snakepit.telemetry"]
        assert "snakepit plugin 'bad'" in record.getMessage()
        assert "FailingPlugin.snakepit_telemetry_event" in record.getMessage()
        assert "<locals>" not in record.getMessage()
    finally:
        plugins.unregister_plugin(good)
        plugins.unregister_plugin(bad)


async def test_call_events_carry_one_id_per_call_and_streams_are_calls(log: Log) -> None:
    async with snakepit.open_pool(chaos_config(size=1, name="ids")) as pool:
        await pool.execute("echo", 1)
        await pool.execute("echo", 2)
        async with pool.stream("count", {"n": 5}) as chunks:
            assert [c async for c in chunks] == list(range(5))
        with pytest.raises(snakepit.RemoteError):
            async with pool.stream("stream_then_raise", {"n": 2}) as chunks:
                async for _ in chunks:
                    pass
    calls = [(name, m, meta) for name, m, meta in log.events if name.startswith("call.")]
    ids = [meta["call"] for _, _, meta in calls]
    # start and end of each call share an id; four calls, four distinct ids
    assert ids[0::2] == ids[1::2] and len(set(ids)) == 4
    assert [name for name, _, _ in calls] == ["call.start", "call.stop"] * 3 + [
        "call.start", "call.exception"]
    stream_stop = calls[5]
    assert stream_stop[2]["stream"] is True and stream_stop[1]["chunks"] == 5
    assert calls[7][2]["stream"] is True and calls[7][2]["error"] == "RemoteError"


async def test_health_rounds_report_each_worker_and_stats_show_per_worker_figures(
        log: Log) -> None:
    config = chaos_config(size=2, name="h", health_check_interval=0.05)
    async with snakepit.open_pool(config) as pool:
        for i in range(20):
            await pool.execute("echo", i)
        seen: set[str] = set()
        both = trio.Event()

        def on_stats(event: str, measurements: Any, metadata: Any) -> None:
            seen.add(metadata["worker"])
            if seen == {"h-0", "h-1"}:
                both.set()

        handler = telemetry.attach("worker.stats", on_stats)
        try:
            await both.wait()  # a health round came round (every 0.05 s)
        finally:
            telemetry.detach(handler)
        stats = pool.stats()
        worker_stats = [(m, meta) for name, m, meta in log.events if name == "worker.stats"]
    assert all(m["rss"] > 1_000_000 and meta["state"] == "ready" for m, meta in worker_stats)
    health = [m for name, m, _ in log.events if name == "pool.health"]
    assert health and health[-1]["total"] == 2 and health[-1]["queue_depth"] == 0
    served = [w for w in stats.workers if w.calls_served]
    assert served and all(w.latency_p50 is not None and w.latency_p99 is not None
                          and w.latency_p50 <= w.latency_p99 and (w.rss or 0) > 1_000_000
                          for w in served)


async def test_dynamic_calls_are_named_by_their_target(log: Log) -> None:
    config = snakepit.PoolConfig(size=1, name="dyn", allowed_targets=("json", "math"),
                                 handler="snakepit.bridge.enhanced:EnhancedHandler")
    async with snakepit.open_pool(config) as pool:
        await pool.call("json.dumps", [1])
        await pool.call("math.sqrt", 4)
        with pytest.raises(snakepit.RemoteError):
            await pool.call("math.sqrt", "four")
    calls = [(name, meta) for name, _, meta in log.events if name.startswith("call.")]
    assert [(name, meta["command"], meta["target"]) for name, meta in calls] == [
        ("call.start", "call:json.dumps", "json.dumps"),
        ("call.stop", "call:json.dumps", "json.dumps"),
        ("call.start", "call:math.sqrt", "math.sqrt"),
        ("call.stop", "call:math.sqrt", "math.sqrt"),
        ("call.start", "call:math.sqrt", "math.sqrt"),
        ("call.exception", "call:math.sqrt", "math.sqrt")]
