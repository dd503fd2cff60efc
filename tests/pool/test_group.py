"""Several named pools from one validated config, with routing."""

from pathlib import Path

import pytest
import trio

import snakepit
from tests.conftest import child_pids

ROOT = Path(__file__).resolve().parents[2]
CHAOS = "snakepit.testing:ChaosHandler"


async def test_the_example_config_starts_its_three_pools() -> None:
    config = snakepit.SnakepitConfig.from_toml(ROOT / "examples" / "snakepit.toml")
    assert set(config.pools) == {"general", "optimizer", "neural"}
    assert config.pools["optimizer"].call_timeout == 300
    async with snakepit.open_pools(config) as pools:
        for name in ("general", "optimizer", "neural"):
            assert await pools[name].execute("echo", name) == name
        assert pools.route("optimize_program") is pools["optimizer"]
        assert pools.route("embed") is pools["neural"]
        assert pools.route("predict") is pools["general"]  # the default pool
        assert await pools.execute("compute", {"op": "add", "a": 1, "b": 1}) == 2
        stats = pools.stats()
        assert {name: len(s.workers) for name, s in stats.items()} == {
            "general": config.pools["general"].size, "optimizer": 2, "neural": 1}
        assert stats["general"].calls == 2
        assert config.pools["neural"].kind == "gpu"  # on the CPU here, by fallback_cpu


async def test_pools_start_concurrently_and_all_stop() -> None:
    config = {"pools": {name: {"size": 1} for name in ("a", "b", "c")}}
    async with snakepit.open_pools(config) as pools:
        pids = {w.pid for p in pools.values() for w in p.workers()}
        assert len(pids) == 3
    assert not child_pids()


async def test_routing_without_default_refuses_unknown_commands() -> None:
    config = {"pools": {"a": {"size": 1}}, "routes": {"echo": "a"}}
    async with snakepit.open_pools(config) as pools:
        assert await pools.execute("echo", 1) == 1
        with pytest.raises(snakepit.RouteNotFound, match="ping"):
            await pools.execute("ping")


async def test_timeout_names_the_pool_that_allows_longer() -> None:
    config = {
        "pools": {
            "general": {"size": 1, "handler": CHAOS, "call_timeout": 0.2},
            "optimizer": {"size": 1, "handler": CHAOS, "call_timeout": 300.0},
        },
        "default_pool": "general",
    }
    async with snakepit.open_pools(config) as pools:
        with pytest.raises(snakepit.WorkerTimeout,
                           match=r"pool 'optimizer' allows 300s: route long calls there"):
            await pools.execute("nap", {"seconds": 30})
        with pytest.raises(snakepit.WorkerTimeout) as info:  # a chosen timeout: no advice
            await pools.execute("nap", {"seconds": 30}, timeout=0.1)
        assert "optimizer" not in str(info.value)


async def test_saturated_pool_raises_pool_saturated_with_retry_after() -> None:
    config = {"pools": {"small": {"size": 1, "handler": CHAOS, "max_queue": 0,
                                  "pipeline_depth": 1}},
              "default_pool": "small"}
    async with snakepit.open_pools(config) as pools:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pools.execute, "nap", {"seconds": 0.3})
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(snakepit.PoolSaturated) as info:
                await pools.execute("echo", 1)
            assert info.value.retry_after > 0


async def test_a_pool_that_cannot_start_stops_the_others() -> None:
    config = {"pools": {"good": {"size": 2}, "bad": {"size": 1, "handler": "nope:Nope"}}}
    with pytest.raises(snakepit.WorkerStartupError, match="nope"):
        async with snakepit.open_pools(config):
            pytest.fail("must not open")
    assert not child_pids()


def test_every_config_error_is_named_with_its_path() -> None:
    with pytest.raises(snakepit.ConfigError) as info:
        snakepit.SnakepitConfig.from_dict({
            "pools": {
                "general": {"size": 0, "codec": "xml"},
                "optimizer": {"size": "many", "max_queue": -1, "restart": {"jitter": 3}},
            },
            "routes": {"optimize*": "nowhere"},
            "default_pool": "missing",
            "extra": True,
        })
    assert sorted(info.value.errors) == sorted([
        "extra: unknown field",
        "pools.general.size: must be an integer >= 1, or 'Nx' for N times the CPU count "
        "(got 0)",
        "pools.general.codec: must be msgpack, json or auto (got 'xml')",
        "pools.optimizer.size: must be an integer >= 1, or 'Nx' for N times the CPU count "
        "(got 'many')",
        "pools.optimizer.restart.jitter: must be a number between 0 and 1 (got 3)",
        "pools.optimizer.max_queue: must be an integer >= 0 (got -1)",
        "routes.optimize*: no pool named 'nowhere'",
        "default_pool: no pool named 'missing'",
    ])


def test_config_loads_from_pyproject_tool_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "app"\n\n[tool.snakepit.pools.general]\nsize = "1x"\n'
        '[tool.snakepit.routes]\n"*" = "general"\n')
    config = snakepit.SnakepitConfig.from_toml(tmp_path / "pyproject.toml")
    assert config.pools["general"].size >= 1 and config.routes == {"*": "general"}
    (tmp_path / "broken.toml").write_text("[pools\n")
    with pytest.raises(snakepit.ConfigError, match=r"broken\.toml"):
        snakepit.SnakepitConfig.from_toml(tmp_path / "broken.toml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pyproject.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(snakepit.ConfigError, match=r"no \[tool.snakepit\] table"):
        snakepit.SnakepitConfig.from_toml(tmp_path / "sub" / "pyproject.toml")
