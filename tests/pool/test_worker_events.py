"""Telemetry from workers (issue 17): ``ctx.emit`` becomes the host event
``worker.<event>`` with the pool, worker and call; names are checked, sizes and rates
bounded, on the worker and again on the host."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import snakepit
from snakepit.protocol import events
from tests.conftest import chaos_config, support_env


def tools_config(**overrides: Any) -> snakepit.PoolConfig:
    options: dict[str, Any] = {"handler": "tools_handler:ToolsHandler", "env": support_env()}
    return chaos_config(**{**options, **overrides})


async def test_an_emitted_event_reaches_the_hosts_listeners() -> None:
    seen: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    handle = snakepit.telemetry.attach(
        "worker.cache.hit", lambda name, m, meta: seen.append((name, dict(m), dict(meta))))
    try:
        async with snakepit.open_pool(tools_config(size=1, name="events")) as pool:
            assert await pool.execute("emit", {
                "event": "cache.hit", "measurements": {"bytes": 12, "ms": 0.5},
                "metadata": {"key": "k1", "hot": True}}, timeout=10) == "sent"
            worker = pool.workers()[0]
    finally:
        snakepit.telemetry.detach(handle)
    assert len(seen) == 1
    name, measurements, metadata = seen[0]
    assert name == "worker.cache.hit"
    assert measurements == {"bytes": 12, "ms": 0.5}
    assert metadata["pool"] == "events" and metadata["worker"] == worker.id
    assert metadata["command"] == "emit" and isinstance(metadata["call"], int)
    assert (metadata["key"], metadata["hot"]) == ("k1", True)


@pytest.mark.parametrize(("event", "measurements", "metadata", "why"), [
    ("Bad Name", None, None, "lower-case words"),
    ("ready", None, None, "reserved"),
    ("ok", {"n": "not a number"}, None, "unsupported value"),
    ("ok", None, {"nested": {"a": 1}}, "unsupported value"),
    ("ok", {f"k{n}": n for n in range(events.MAX_KEYS + 1)}, None, "keys"),
    ("ok", None, {"text": "x" * (events.MAX_TEXT + 1)}, "unsupported value"),
])
async def test_bad_events_are_refused_in_the_worker_and_on_the_host(
        event: str, measurements: Any, metadata: Any, why: str) -> None:
    seen: list[str] = []
    handle = snakepit.telemetry.attach("*", lambda name, m, meta: seen.append(name))
    try:
        async with snakepit.open_pool(tools_config(size=1)) as pool:
            args = {"event": event, "measurements": measurements, "metadata": metadata}
            refused = await pool.execute("emit", args, timeout=10)
            # a worker that skips the checks (another language, a bug) is checked again
            assert await pool.execute("emit_raw", args, timeout=10) == "sent"
            assert await pool.execute("pid", timeout=10) == pool.workers()[0].pid
            dropped = pool._tools.events_dropped
    finally:
        snakepit.telemetry.detach(handle)
    assert refused.startswith("ValueError:") and why in refused
    assert dropped == 1
    assert not [name for name in seen if name.startswith("worker.") and name not in
                snakepit.telemetry.EVENTS]


async def test_a_flood_of_events_is_cut_to_the_rate() -> None:
    seen: list[str] = []
    handle = snakepit.telemetry.attach("worker.tick", lambda name, m, meta: seen.append(name))
    burst = int(events.MAX_EVENTS_PER_SECOND)
    try:
        async with snakepit.open_pool(tools_config(size=1)) as pool:
            started = trio.current_time()
            await pool.execute("emit", {"event": "tick", "times": 3 * burst}, timeout=30)
            elapsed = trio.current_time() - started
            dropped = pool._tools.events_dropped
    finally:
        snakepit.telemetry.detach(handle)
    # a full burst passes, then no more than the rate allows for the time it took
    assert burst <= len(seen) <= burst + events.MAX_EVENTS_PER_SECOND * elapsed + 1
    assert dropped == 3 * burst - len(seen) > 0


def test_only_valid_worker_event_names_can_be_attached() -> None:
    handle = snakepit.telemetry.attach("worker.my_event", lambda *a: None)
    snakepit.telemetry.detach(handle)
    with pytest.raises(ValueError, match="unknown telemetry events"):
        snakepit.telemetry.attach("worker.Not Valid", lambda *a: None)
