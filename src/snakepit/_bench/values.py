"""Framework values through ``pool.call``: pandas frames and torch tensors (issue 19).

Each figure comes with the reference its target compares it to, measured in the same
run: a frame's numeric columns against a shared-memory echo of the same number of
bytes, a string-heavy frame against pickle (dumps and loads, twice: what a round trip
through a process costs a pickling pool), a tensor against an echo of its bytes.
The identity targets (``pandas.DataFrame.copy`` with ``deep=False``,
``torch.Tensor.detach``) cost nothing in the worker, so what is timed is the values'
trip: encode, codec, decode, both ways.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import time
from typing import Any

import snakepit

__all__ = ["frame", "frame_round_trip", "missing", "pickle_twice", "tensor_round_trip"]

ENHANCED = "snakepit.bridge.enhanced:EnhancedHandler"
STRING_COLUMNS = 2


def missing() -> list[str]:
    """The frameworks these figures need that are not installed here."""
    return [name for name in ("pandas", "torch") if importlib.util.find_spec(name) is None]


def frame(rows: int, *, strings: bool) -> Any:
    """``rows`` rows of 9 mixed columns (ints, floats, booleans, datetimes, a
    categorical, and two string columns), or of the 7 numeric ones only."""
    import numpy

    pandas = _module("pandas")
    rng = numpy.random.default_rng(19)
    columns: dict[str, Any] = {
        "id": numpy.arange(rows, dtype="int64"),
        "count": rng.integers(0, 1000, rows, dtype="int32"),
        "price": rng.random(rows),
        "ratio": rng.random(rows, dtype="float32"),
        "flag": rng.random(rows) > 0.5,
        "when": pandas.date_range("2026-01-01", periods=rows, freq="s"),
        "kind": pandas.Categorical(rng.integers(0, 10, rows).astype(str)),
    }
    if strings:
        columns["name"] = pandas.Series([f"name-{i % 50_000}" for i in range(rows)],
                                        dtype="str")
        columns["city"] = pandas.Series([f"city {i % 977} street" for i in range(rows)],
                                        dtype="str")
    return pandas.DataFrame(columns)


def numeric_bytes(table: Any) -> int:
    """The bytes of a frame's column data (what a copy of the numbers moves)."""
    return int(table.memory_usage(index=False, deep=False).sum())


async def frame_round_trip(table: Any, rounds: int) -> float:
    """Seconds per round trip of ``table`` through a worker (median of ``rounds``)."""
    config = _config("pandas")
    async with snakepit.open_pool(config) as pool:
        await pool.call("pandas.DataFrame.copy", table.head(100), deep=False)  # warm up
        return await _median(rounds, pool.call, "pandas.DataFrame.copy", table,
                             deep=False)


def pickle_twice(table: Any, rounds: int) -> float:
    """Seconds for pickle's dumps and loads of ``table``, twice (there and back)."""
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(2):
            pickle.loads(pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL))
        samples.append(time.perf_counter() - began)
    return sorted(samples)[len(samples) // 2]


async def tensor_round_trip(size: int, rounds: int) -> float:
    """Seconds per round trip of a float32 tensor of ``size`` bytes through a worker."""
    tensor = _module("torch").rand(size // 4)
    config = _config("torch")
    async with snakepit.open_pool(config) as pool:
        await pool.call("torch.Tensor.detach", tensor)  # warm up (imports torch there)
        return await _median(rounds, pool.call, "torch.Tensor.detach", tensor)


def _module(name: str) -> Any:
    """A framework, imported untyped (mypy need not analyse pandas or torch here)."""
    return importlib.import_module(name)


def _config(framework: str) -> snakepit.PoolConfig:
    options: dict[str, Any] = {"size": 1, "handler": ENHANCED, "startup_timeout": 120,
                               "allowed_targets": (framework,), "max_frame_size": 1 << 31}
    return snakepit.PoolConfig(**options)


async def _median(rounds: int, call: Any, *args: Any, **kwargs: Any) -> float:
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        await call(*args, **kwargs)
        samples.append(time.perf_counter() - began)
    return sorted(samples)[len(samples) // 2]
