"""pool.call in Prometheus: named by target, and background releases are no calls."""

import gc
import uuid

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import snakepit
from snakepit_prometheus import REGISTRY


def samples(pool: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of ``snakepit_calls`` for ``pool``: (name, labels, value)."""
    text = generate_latest(REGISTRY).decode()
    return [(sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name.startswith("snakepit_calls") and sample.labels.get("pool") == pool]


async def test_calls_are_counted_by_target_and_releases_not_at_all() -> None:
    name = f"prom-dyn-{uuid.uuid4().hex[:8]}"
    config = snakepit.PoolConfig(size=1, name=name, allowed_targets=("json", "fractions"),
                                 handler="snakepit.bridge.enhanced:EnhancedHandler")
    async with snakepit.open_pool(config) as pool:
        await pool.call("json.dumps", [1])
        await pool.call("json.dumps", [2])
        ref = await pool.call("fractions.Fraction", 1, 3)
        del ref
        gc.collect()  # its release is due as the pool closes
    counted = {(labels["command"], labels["outcome"]): value
               for sample, labels, value in samples(name) if sample == "snakepit_calls_total"}
    assert counted == {("call:json.dumps", "ok"): 2.0, ("call:fractions.Fraction", "ok"): 1.0}
