"""Configuration mistakes that used to pass silently, and a generator of many at once:
every mistake is a ConfigError line with its path, all in one error."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import snakepit

INF, NAN = math.inf, math.nan


def paths(error: snakepit.ConfigError) -> list[str]:
    return [line.split(": ", 1)[0] for line in error.errors]


def errors_of(data: dict[str, Any]) -> snakepit.ConfigError:
    with pytest.raises(snakepit.ConfigError) as info:
        snakepit.SnakepitConfig.from_dict(data)
    return info.value


# -- the mistakes the issue names ------------------------------------------------------
def test_a_string_is_not_a_list_of_error_names() -> None:
    """``only = "WorkerCrashed"`` became ``('W', 'o', ...)`` and retried nothing."""
    with pytest.raises(snakepit.ConfigError) as info:
        snakepit.RetryPolicy(only="WorkerCrashed")
    assert info.value.errors == ("only: must be a list of error class names or None "
                                 "(got 'WorkerCrashed')",)
    error = errors_of({"pools": {"p": {"retry": {"only": "WorkerCrashed"},
                                       "circuit_breaker": {"failures": "WorkerCrashed"}}}})
    assert sorted(error.errors) == [
        "pools.p.circuit_breaker.failures: must be a list of error class names "
        "(got 'WorkerCrashed')",
        "pools.p.retry.only: must be a list of error class names or None "
        "(got 'WorkerCrashed')"]
    assert snakepit.RetryPolicy(only=["WorkerCrashed"]).only == ("WorkerCrashed",)


def test_misspelled_error_names_are_refused() -> None:
    """A misspelled name in ``failures`` left the circuit closed for good."""
    error = errors_of({"pools": {"p": {
        "retry": {"only": ["WorkerCrashed", "PoolSaturatd"]},
        "circuit_breaker": {"failures": ["WorkerTimout", "ProtocolError", "Crashed"]}}}})
    assert paths(error) == ["pools.p.retry.only", "pools.p.circuit_breaker.failures"]
    assert "no error class named 'PoolSaturatd'; known: " in error.errors[0]
    assert "no error class named 'WorkerTimout', 'Crashed'; known: " in error.errors[1]
    assert "WorkerCrashed" in error.errors[1]  # the list names the real ones
    with pytest.raises(snakepit.ConfigError, match="failures: no error class named 'Oops'"):
        snakepit.CircuitBreakerPolicy(failures=("Oops",))
    # every default and every error class is accepted
    snakepit.CircuitBreakerPolicy(failures=tuple(snakepit.errors.__all__))
    snakepit.RetryPolicy(only=("SnakepitError",))


def test_an_unknown_key_in_a_nested_table_hides_nothing() -> None:
    error = errors_of({"pools": {"p": {
        "restart": {"jiter": 0.1, "max_restarts": -1, "period": "x"},
        "retry": {"max_atempts": 2, "multiplier": 0.5},
        "circuit_breaker": {"windw": 1, "failure_threshold": 0},
        "size": 0}}})
    assert sorted(paths(error)) == sorted([
        "pools.p.restart.jiter", "pools.p.restart.max_restarts", "pools.p.restart.period",
        "pools.p.retry.max_atempts", "pools.p.retry.multiplier",
        "pools.p.circuit_breaker.windw", "pools.p.circuit_breaker.failure_threshold",
        "pools.p.size"])
    assert "pools.p.restart.jiter: unknown field" in error.errors


def _durations() -> list[tuple[type[Any], str]]:
    """Every float field of every configuration class (a duration, a factor, a ratio)."""
    found = []
    for cls in (snakepit.PoolConfig, snakepit.RestartPolicy, snakepit.RetryPolicy,
                snakepit.CircuitBreakerPolicy):
        for field in attrs.fields(attrs.resolve_types(cls)):
            if field.type in (float, float | None):
                found.append((cls, field.name))
    return found


DURATIONS = _durations()


def test_the_float_fields_are_the_ones_reviewed() -> None:
    """A new float field must be added to this review: none takes inf or nan."""
    assert {f"{cls.__name__}.{name}" for cls, name in DURATIONS} == {
        "PoolConfig.startup_timeout", "PoolConfig.call_timeout", "PoolConfig.cancel_grace",
        "PoolConfig.shutdown_grace", "PoolConfig.kill_timeout",
        "PoolConfig.stream_idle_timeout", "PoolConfig.session_ttl",
        "PoolConfig.health_check_interval", "PoolConfig.health_check_timeout",
        "PoolConfig.heartbeat_interval", "PoolConfig.heartbeat_timeout",
        "PoolConfig.worker_ttl", "RestartPolicy.period", "RestartPolicy.backoff_initial",
        "RestartPolicy.backoff_max", "RestartPolicy.jitter", "RestartPolicy.cooldown",
        "RetryPolicy.backoff_initial",
        "RetryPolicy.backoff_max", "RetryPolicy.multiplier", "RetryPolicy.jitter",
        "CircuitBreakerPolicy.window", "CircuitBreakerPolicy.reset_timeout"}


@pytest.mark.parametrize(("cls", "name"), DURATIONS,
                         ids=[f"{cls.__name__}.{name}" for cls, name in DURATIONS])
@pytest.mark.parametrize("value", [INF, -INF, NAN], ids=["inf", "-inf", "nan"])
def test_no_float_field_takes_inf_or_nan(cls: type[Any], name: str, value: float) -> None:
    """``kill_timeout = inf`` meant a shutdown ladder that never SIGKILLs; ``None`` is
    how a field says "no limit" where it has one."""
    with pytest.raises(snakepit.ConfigError) as info:
        cls(**{name: value})
    assert paths(info.value) == [name]
    assert f"(got {value!r})" in info.value.errors[0]
    table = {"pools": {"p": {name: value} if cls is snakepit.PoolConfig else {
        {snakepit.RestartPolicy: "restart", snakepit.RetryPolicy: "retry",
         snakepit.CircuitBreakerPolicy: "circuit_breaker"}[cls]: {name: value}}}}
    assert len(errors_of(table).errors) == 1


# -- many mistakes at once, generated --------------------------------------------------
DURATION = [0, -1, INF, -INF, NAN, "x", True, None, [1]]
OPTIONAL_DURATION = [0, -1, INF, NAN, "x", True, [1]]
GRACE = [-1, INF, NAN, "x", None]
MISTAKES: dict[str, dict[str, list[Any]]] = {
    "pool": {
        "name": ["", 3], "size": [0, -1, "many", True, 1.5, INF], "adapter": ["", None],
        "handler": ["nocolon", ":Class", "module:", 3], "python": ["", 3], "kind": ["", 1],
        "options": [[], "x", {1: 2}], "command": [[], "node worker.js", [1, 2], 5],
        "env": [{"A": 1}, ["A"], "A=1"], "cwd": [3, []], "codec": ["yaml", 1, None],
        "max_frame_size": [1023, 2**32, "big", 1.5], "startup_timeout": DURATION,
        "call_timeout": OPTIONAL_DURATION, "max_queue": [-1, "x", 1.5],
        "pipeline_depth": [0, "x"], "cancel_grace": GRACE, "shutdown_grace": GRACE,
        "kill_timeout": DURATION, "stream_window": [0, "x"], "host_tool_limit": [0, 1.5],
        "stream_idle_timeout": OPTIONAL_DURATION,
        "session_ttl": OPTIONAL_DURATION, "health_check_interval": OPTIONAL_DURATION,
        "health_check_timeout": DURATION, "heartbeat_interval": OPTIONAL_DURATION,
        "heartbeat_timeout": DURATION, "max_calls": [0, "x", 1.5],
        "worker_ttl": OPTIONAL_DURATION, "memory_limit": [0, "x", 1.5, INF],
        "allowed_targets": ["json", [""], [1]], "control": ["yes", 1],
        "state_dir": ["", 3], "preload": ["numpy", ["not a module"], [1]],
        "warm_start": ["no", 0], "shm_threshold": [1023, "x", 0],
        "restart": [5, "x", []], "retry": [5, "x"], "circuit_breaker": [5, "x"]},
    "restart": {
        "max_restarts": [-1, "x", 1.5], "period": DURATION, "backoff_initial": GRACE,
        "backoff_max": GRACE, "jitter": [-0.1, 1.5, "x", NAN],
        "cooldown": OPTIONAL_DURATION},
    "retry": {
        "max_attempts": [0, "x"], "backoff_initial": GRACE, "backoff_max": GRACE,
        "multiplier": [0.5, INF, "x"], "jitter": [-0.1, 1.5, "x"],
        "only": ["WorkerCrashed", ["WorkerCrashd"], [1], "x"]},
    "circuit_breaker": {
        "failure_threshold": [0, "x"], "window": DURATION, "reset_timeout": DURATION,
        "per_command": ["yes", 1], "failures": ["WorkerCrashed", ["WorkerTimeuot"], [3]]},
}
FIELDS = {table: {field.name for field in attrs.fields(cls)} for table, cls in (
    ("pool", snakepit.PoolConfig), ("restart", snakepit.RestartPolicy),
    ("retry", snakepit.RetryPolicy), ("circuit_breaker", snakepit.CircuitBreakerPolicy))}


def test_the_catalogue_covers_every_field() -> None:
    assert {table: set(fields) for table, fields in MISTAKES.items()} == FIELDS


def unknown_keys(table: str) -> st.SearchStrategy[list[str]]:
    key = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
    return st.lists(key.filter(lambda k: k not in FIELDS[table]), max_size=2, unique=True)


@st.composite
def broken_table(draw: st.DrawFn, table: str) -> tuple[dict[str, Any], set[str]]:
    """A table of ``table``'s fields with some mistakes, and the paths of each (relative
    to the table)."""
    data: dict[str, Any] = {}
    expected: set[str] = set()
    names = draw(st.lists(st.sampled_from(sorted(MISTAKES[table])), max_size=5, unique=True))
    for name in names:
        data[name] = draw(st.sampled_from(MISTAKES[table][name]))
        expected.add(name)
    for key in draw(unknown_keys(table)):
        data[key] = draw(st.integers())
        expected.add(key)
    if table == "pool":  # nested tables, themselves broken (unless broken as a whole)
        for nested in ("restart", "retry", "circuit_breaker"):
            if nested not in data and draw(st.booleans()):
                inner, inner_paths = draw(broken_table(nested))
                data[nested] = inner
                expected |= {f"{nested}.{path}" for path in inner_paths}
    return data, expected


@st.composite
def broken_config(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    """A SnakepitConfig table: some pools with mistakes (at least one mistake in all),
    maybe a route or a default pool that names no pool, maybe an unknown key."""
    data: dict[str, Any] = {"pools": {}}
    expected: set[str] = set()
    for index in range(draw(st.integers(1, 3))):
        table, inner = draw(broken_table("pool").filter(lambda t: "name" not in t[0]))
        data["pools"][f"p{index}"] = table
        expected |= {f"pools.p{index}.{path}" for path in inner}
    if draw(st.booleans()):
        data["routes"] = {"cmd*": "p0", "other*": "nowhere"}
        expected.add("routes.other*")
    if draw(st.booleans()):
        data["default_pool"] = "missing"
        expected.add("default_pool")
    if draw(st.booleans()):
        data["extra"] = 1
        expected.add("extra")
    if not expected:
        data["pools"]["p0"]["size"] = 0
        expected.add("pools.p0.size")
    return data, expected


@settings(max_examples=300, deadline=None)
@given(case=broken_config())
def test_every_generated_mistake_is_named_once(case: tuple[dict[str, Any], set[str]]) -> None:
    data, expected = case
    found = paths(errors_of(data))
    assert sorted(found) == sorted(expected)  # each one, once, and nothing else


@settings(max_examples=200, deadline=None)
@given(case=broken_table("pool").filter(lambda t: bool(t[1])))
def test_every_mistake_is_named_when_built_in_python(
        case: tuple[dict[str, Any], set[str]]) -> None:
    """The same mistakes as keyword arguments (nested tables as policy objects, built
    first: their own mistakes are their own ConfigError)."""
    data, expected = case
    top = {name: value for name, value in data.items() if name in FIELDS["pool"]
           and not (name in ("restart", "retry", "circuit_breaker") and isinstance(value, dict))}
    unknown = {name for name in data if name not in FIELDS["pool"]}
    if not set(top):
        return
    with pytest.raises(snakepit.ConfigError) as info:
        snakepit.PoolConfig(**top)
    assert sorted(paths(info.value)) == sorted(set(top) & (expected - unknown))
