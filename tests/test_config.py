"""PoolConfig validation: every bad field named, all at once."""

import pytest

import snakepit


def test_defaults_are_valid_and_frozen() -> None:
    config = snakepit.PoolConfig()
    assert config.size >= 1 and config.codec == "msgpack"
    with pytest.raises(AttributeError):
        config.size = 3  # type: ignore[misc]


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(snakepit.ConfigError) as info:
        snakepit.PoolConfig(size=0, codec="yaml", max_queue=-1, startup_timeout=0,  # type: ignore[arg-type]
                            handler="not-a-spec")
    fields = [error.split(":")[0] for error in info.value.errors]
    assert fields == ["size", "handler", "codec", "startup_timeout", "max_queue"]
    assert "size: must be an integer >= 1, or 'Nx' for N times the CPU count (got 0)" in (
        info.value.errors)
    assert isinstance(info.value, snakepit.SnakepitError)
    assert isinstance(info.value, ValueError)


def test_bools_are_not_integers() -> None:
    with pytest.raises(snakepit.ConfigError, match="size"):
        snakepit.PoolConfig(size=True)


def test_restart_policy_is_validated() -> None:
    with pytest.raises(snakepit.ConfigError, match="jitter: must be between 0 and 1"):
        snakepit.RestartPolicy(jitter=2)


def test_from_dict_reports_paths_of_nested_and_unknown_fields() -> None:
    with pytest.raises(snakepit.ConfigError) as info:
        snakepit.PoolConfig.from_dict(
            {"size": "4", "sise": 3, "restart": {"jitter": "lots"}}, path="pools.optimizer"
        )
    assert sorted(info.value.errors) == [
        "pools.optimizer.restart.jitter: must be a number",
        "pools.optimizer.sise: unknown field",
        "pools.optimizer.size: must be an integer",
    ]


def test_from_dict_reports_value_errors_with_paths() -> None:
    with pytest.raises(snakepit.ConfigError) as info:
        snakepit.PoolConfig.from_dict({"size": 2, "restart": {"max_restarts": -1}}, path="pool")
    assert info.value.errors == ("pool.restart.max_restarts: must be an integer >= 0 (got -1)",)


def test_from_dict_builds_a_config() -> None:
    config = snakepit.PoolConfig.from_dict(
        {"size": 2, "command": ["node", "worker.js"], "restart": {"max_restarts": 1}}
    )
    assert config.command == ("node", "worker.js")
    assert config.restart.max_restarts == 1


def test_memory_limit_needs_health_checks() -> None:
    with pytest.raises(snakepit.ConfigError, match=r"memory_limit: .*health_check_interval"):
        snakepit.PoolConfig(memory_limit=10**9, health_check_interval=None)
