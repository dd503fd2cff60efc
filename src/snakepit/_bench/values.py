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

import argparse
import functools
import importlib
import importlib.util
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

import trio

import snakepit
from snakepit._bench import ours

__all__ = ["frame", "frame_round_trip", "missing", "payload_rows", "pickle_twice",
           "tensor_round_trip"]

Repeat = Callable[[dict[str, Callable[[], dict[str, Any]]]], dict[str, list[dict[str, Any]]]]
"""The runner's ``_repeat``: every measurement run ``--repeat`` times, interleaved."""

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


# -- the runner's payload rows ----------------------------------------------------------
def _frame_trip(rows: int, strings: bool, rounds: int) -> dict[str, Any]:
    table = frame(rows, strings=strings)
    return {"seconds": trio.run(frame_round_trip, table, rounds)}


def _frame_pickled(rows: int, rounds: int) -> dict[str, Any]:
    return {"seconds": pickle_twice(frame(rows, strings=True), rounds)}


def _tensor_trip(size: int, rounds: int) -> dict[str, Any]:
    return {"seconds": trio.run(tensor_round_trip, size, rounds)}


def _echo(size: int, rounds: int) -> dict[str, Any]:
    """The reference: an echo of ``size`` bytes through shared memory."""
    return {"seconds": trio.run(functools.partial(ours.payload, size, rounds,
                                                  out_of_band=True))}


def payload_rows(options: argparse.Namespace, repeat: Repeat) -> list[dict[str, Any]]:
    """Framework values through ``pool.call`` (issue 19), each beside its reference:
    a frame's numeric columns and a shared-memory echo of as many bytes, a frame with
    string columns and pickle (dumps and loads, twice), a tensor and an echo of its
    bytes. Rows carry a ``role`` the targets find them by; none without pandas/torch.
    ``repeat`` runs the measurements, interleaved (the runner's ``_repeat``)."""
    absent = missing()
    rows_count = 50_000 if options.quick else 1_000_000
    tensor_size = (4 << 20) if options.quick else (57 << 20)
    rounds = 1 if options.quick else 3
    label = f"{rows_count // 1000}k rows" if rows_count < 1_000_000 else (
        f"{rows_count // 1_000_000}M rows")
    runs: dict[str, Callable[[], dict[str, Any]]] = {}
    roles: dict[str, tuple[str, str, int]] = {}  # name -> (role, label, bytes moved)
    if "pandas" not in absent:
        numeric = numeric_bytes(frame(rows_count, strings=False))
        mixed = int(frame(rows_count, strings=True).memory_usage(deep=True).sum())
        for name, run, role, size in (
                ("pandas frame, 7 numeric columns", functools.partial(
                    _frame_trip, rows_count, False, rounds), "frame-numeric", numeric),
                ("shared-memory echo of its bytes", functools.partial(
                    _echo, numeric, rounds), "frame-numeric-echo", numeric),
                ("pandas frame, 9 columns (2 strings)", functools.partial(
                    _frame_trip, rows_count, True, rounds), "frame-mixed", mixed),
                ("pickle dumps+loads x2 of that frame", functools.partial(
                    _frame_pickled, rows_count, rounds), "frame-mixed-pickle", mixed)):
            runs[name] = run
            roles[name] = (role, label, size)
    if "torch" not in absent:
        mib = f"{tensor_size >> 20} MiB"
        for name, run, role in (
                ("torch tensor (float32)", functools.partial(
                    _tensor_trip, tensor_size, rounds), "tensor"),
                ("echo of the tensor's bytes", functools.partial(
                    _echo, tensor_size, rounds), "tensor-echo")):
            runs[name] = run
            roles[name] = (role, mib, tensor_size)
    found = []
    for name, samples in repeat(runs).items():
        role, size_label, size = roles[name]
        seconds = statistics.median(sample["seconds"] for sample in samples)
        found.append({"name": name, "label": size_label, "size": size, "role": role,
                      "round_trip_ms": seconds * 1e3, "mb_per_s": size / seconds / 1e6,
                      "round_trip_ms_samples": [s["seconds"] * 1e3 for s in samples]})
    return found
