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
    with pytest.raises(snakepit.ConfigError,
                       match=r"jitter: must be a number between 0 and 1 \(got 2\)"):
        snakepit.RestartPolicy(jitter=2)


def test_from_dict_reports_paths_of_nested_and_unknown_fields() -> None:
    with pytest.raises(snakepit.ConfigError) as info:
        snakepit.PoolConfig.from_dict(
            {"size": "4", "sise": 3, "restart": {"jitter": "lots"}}, path="pools.optimizer"
        )
    assert sorted(info.value.errors) == [
        "pools.optimizer.restart.jitter: must be a number between 0 and 1 (got 'lots')",
        "pools.optimizer.sise: unknown field",
        "pools.optimizer.size: must be an integer >= 1, or 'Nx' for N times the CPU count "
        "(got '4')",
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


@pytest.mark.parametrize(("table", "expected"), [
    ({"restart": {"jitter": "lots", "max_restarts": -1}},
     ["p.restart.jitter: must be a number between 0 and 1 (got 'lots')",
      "p.restart.max_restarts: must be an integer >= 0 (got -1)"]),
    ({"circuit_breaker": {"failure_threshold": 0, "window": "x"}},
     ["p.circuit_breaker.window: must be a finite number > 0 (got 'x')",
      "p.circuit_breaker.failure_threshold: must be an integer >= 1 (got 0)"]),
    ({"size": "x", "retry": {"max_attempts": 0, "jitter": "x"}},
     ["p.size: must be an integer >= 1, or 'Nx' for N times the CPU count (got 'x')",
      "p.retry.jitter: must be a number between 0 and 1 (got 'x')",
      "p.retry.max_attempts: must be an integer >= 1 (got 0)"]),
], ids=["restart", "circuit_breaker", "retry"])
def test_a_nested_table_with_a_type_error_reports_its_other_errors(
        table: dict[str, object], expected: list[str]) -> None:
    with pytest.raises(snakepit.ConfigError) as info:
        snakepit.PoolConfig.from_dict(table, path="p")
    assert sorted(info.value.errors) == sorted(expected)


def test_cross_field_checks_run_beside_other_errors() -> None:
    with pytest.raises(snakepit.ConfigError) as info:
        snakepit.PoolConfig(size=0, memory_limit=10**9, health_check_interval=None,
                            heartbeat_interval=2.0, heartbeat_timeout=1.0)
    assert [error.split(":")[0] for error in info.value.errors] == [
        "size", "memory_limit", "heartbeat_timeout"]
    with pytest.raises(snakepit.ConfigError) as info:
        snakepit.PoolConfig.from_dict({"size": "many", "memory_limit": 10**9,
                                       "health_check_interval": None,
                                       "heartbeat_interval": 2, "heartbeat_timeout": 1,
                                       "restart": {"period": "x"}}, path="pools.p")
    assert sorted(info.value.errors) == sorted([
        "pools.p.size: must be an integer >= 1, or 'Nx' for N times the CPU count "
        "(got 'many')",
        "pools.p.restart.period: must be a finite number > 0 (got 'x')",
        "pools.p.memory_limit: is sampled by the health check, so it needs "
        "health_check_interval to be set",
        "pools.p.heartbeat_timeout: must exceed heartbeat_interval (2)"])


def test_a_field_of_the_wrong_type_is_not_also_blamed_by_a_cross_check() -> None:
    with pytest.raises(snakepit.ConfigError) as info:
        snakepit.PoolConfig.from_dict({"heartbeat_interval": "x", "heartbeat_timeout": 0.5,
                                       "command": ["node", "worker.js"], "size": "x"})
    assert sorted(info.value.errors) == [
        "heartbeat_interval: must be a finite number > 0 or None (got 'x')",
        "size: must be an integer >= 1, or 'Nx' for N times the CPU count (got 'x')"]
