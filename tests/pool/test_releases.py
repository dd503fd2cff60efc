"""Background releases of dropped Refs are housekeeping, not the application's calls."""

from __future__ import annotations

import gc
from typing import Any

import snakepit
from snakepit import telemetry

CONFIG = snakepit.PoolConfig(size=1, handler="snakepit.bridge.enhanced:EnhancedHandler",
                             allowed_targets=("fractions",))


class CallEvents:
    """The call.* events of a block: (event, command, error)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    def __call__(self, event: str, measurements: Any, metadata: Any) -> None:
        self.seen.append((event, metadata["command"], metadata.get("error")))

    def __enter__(self) -> CallEvents:
        self._handler = telemetry.attach(["call.start", "call.stop", "call.exception"], self)
        return self

    def __exit__(self, *exc: object) -> None:
        telemetry.detach(self._handler)


async def test_a_ref_dropped_as_the_pool_closes_fails_no_call() -> None:
    with CallEvents() as events:
        async with snakepit.open_pool(CONFIG) as pool:
            ref = await pool.call("fractions.Fraction", 1, 3)
            del ref
            gc.collect()  # its release is now due, as the pool closes
        stats = pool.stats()
    assert (stats.calls, stats.succeeded, stats.failed) == (1, 1, 0)
    assert events.seen == [("call.start", "call:fractions.Fraction", None),
                           ("call.stop", "call:fractions.Fraction", None)]


async def test_releases_free_objects_without_counting_as_calls() -> None:
    with CallEvents() as events:
        async with snakepit.open_pool(CONFIG) as pool:
            for n in range(3):
                await pool.call("fractions.Fraction", 1, n + 2)  # each dropped at once
            await pool.collect_refs()
            assert (await pool.execute("info"))["objects"]["global"] == 0
            stats = pool.stats()
    assert (stats.calls, stats.failed) == (4, 0)  # three calls and the info
    assert [command for event, command, _ in events.seen if event == "call.start"] == [
        "call:fractions.Fraction"] * 3 + ["info"]
