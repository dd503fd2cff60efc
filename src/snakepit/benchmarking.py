"""Side-by-side benchmarks: snakepit against the pools a Python user would pick instead.

``snakepit bench``, ``nox -s bench`` and ``python benchmarks/run.py`` run :func:`main`.
One run measures, on the same trivial task and worker count, and prints with ratios:

- **calls**: throughput of many concurrent trivial calls, and sequential latency p50/p99,
  for snakepit, ``concurrent.futures.ProcessPoolExecutor``, trio-parallel, pebble, and
  the raw pipe floor (children answering length-prefixed msgpack, driven by one host
  thread with the same pipelining: what any pipe-based pool could at best do here);
- **start**: time until N workers that import a heavy module (numpy when installed)
  are ready -- snakepit cold, snakepit warm (forked from a template that imported once),
  and the peers;
- **payloads**: 1 MiB and 64 MiB echo round trips -- snakepit through shared memory and
  in band, the raw pipe floor, and the peers; then framework values through
  ``pool.call`` beside their references (``_bench/values.py``): 1M rows x 7 numeric
  columns against a shared-memory echo of their bytes, 1M rows x 9 mixed columns
  against pickle, a 57 MiB tensor against an echo of its bytes (with pandas and torch);
- **streams**: chunks/s and MB/s for 16 B and 64 KiB chunks, against the raw floor;
- **sessions**: session-store operations per second;
- **isolation**: the call right after a timeout, and a burst of slow calls right after
  three of four workers died (:mod:`snakepit._bench.isolation`);
- **host_tools**: a call whose handler calls a host tool, p50/p99 next to a plain
  call's (:mod:`snakepit._bench.hosttools`).
- **map**: ``pool.map`` against the peers' maps (:mod:`snakepit._bench.mapping`).

Then it checks the issue's targets (PASS/FAIL, as ratios within the run) and saves
``latest.json``, one line of ``history.jsonl`` and a chart ``latest.png`` (with
matplotlib). pebble and trio-parallel are optional: a missing one is skipped with a
note. The machine is rarely quiet: each measurement is repeated (``--repeat``), the
pools interleaved, and medians reported; the load average is recorded with the run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

import snakepit
from snakepit import telemetry
from snakepit._bench import hosttools, isolation, issue18, machine, ours, peers, raw, values
from snakepit._bench.report import RAW, SNAKEPIT, median_row, percentile, print_report, save
from snakepit._bench.report import targets as check_targets

__all__ = ["main", "sections_of"]

SECTIONS = ("calls", "start", "payloads", "streams", "sessions", "isolation", "map",
            "host_tools")

_SYNTHETIC = "snakepit_bench_heavy"
_SYNTHETIC_SOURCE = "import time\ntime.sleep({seconds})  # a heavy library's import\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snakepit bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="workers per pool (2)")
    parser.add_argument("--calls", type=int, default=20_000,
                        help="concurrent trivial calls per throughput run (20000)")
    parser.add_argument("--seq", type=int, default=3_000,
                        help="sequential calls for p50/p99 (3000)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs of each measurement, interleaved; medians are reported "
                             "and targets judged on the median of per-run ratios (5)")
    parser.add_argument("--start-workers", type=int, default=16,
                        help="workers for the start-up measurement (16)")
    parser.add_argument("--heavy-module", default=None,
                        help="module the start-up workers import (numpy when installed, "
                             "else a synthetic 0.2 s import)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run ({','.join(SECTIONS)})")
    parser.add_argument("--no-peers", action="store_true",
                        help="measure snakepit and the raw floor only")
    parser.add_argument("--quick", action="store_true",
                        help="tiny counts, one run: checks that the benchmark works, "
                             "measures nothing worth keeping")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"),
                        help="where latest.json, history.jsonl and latest.png go")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--keep-telemetry", action="store_true",
                        help="keep telemetry listeners installed plugins attached")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a target fails")
    machine.add_arguments(parser)
    return parser


def sections_of(argv: list[str] | None) -> list[str]:
    """The sections a run with ``argv`` measures, in order."""
    options = _parser().parse_args(argv)
    return [name.strip() for name in options.only.split(",") if name.strip()]


def main(argv: list[str] | None = None, *,
         on_section: Callable[[str], None] | None = None) -> int:
    """Run the benchmarks; returns the exit status (1 with ``--strict`` and a FAIL).

    ``on_section(name)`` is called as each section begins (the CLI's progress bar).
    """
    options = _parser().parse_args(argv)
    if options.quick:
        options.calls, options.seq, options.repeat = 300, 60, 1
        options.start_workers = min(options.start_workers, 2)
    sections = sections_of(argv)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"snakepit bench: unknown sections {unknown}; choose from {SECTIONS}",
              file=sys.stderr)
        return 2
    failed = False  # --state both: all the sections idle, then all of them busy
    for state in machine.STATES if options.state == "both" else (options.state,):
        with machine.state(state):
            report = _run(options, sections, on_section, state)
        print_report(report)
        if not options.no_save:
            written = save(report, options.output)
            (options.output / f"latest-{state}.json").write_text(written[0].read_text())
            print("\nsaved " + ", ".join(str(path) for path in written))
        failed = failed or any(target["passed"] is False for target in report["targets"])
    return 1 if options.strict and failed else 0


def _run(options: argparse.Namespace, sections: list[str],
         on_section: Callable[[str], None] | None = None, state: str = "idle") -> dict[str, Any]:
    report: dict[str, Any] = {
        "version": 1, "time": time.time(), "snakepit": snakepit.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "load": list(os.getloadavg()), "notes": [],
        "state": state,  # set before the targets: 10 µs items are judged idle only
        "options": {"workers": options.workers, "calls": options.calls, "seq": options.seq,
                    "repeat": options.repeat, "start_workers": options.start_workers,
                    "quick": options.quick, "sections": sections},
    }
    notes: list[str] = report["notes"]
    available = _peers(options, notes)
    with _quiet_telemetry(options.keep_telemetry, notes), tempfile.TemporaryDirectory(
            prefix="snakepit-bench-") as scratch:
        module, path = _heavy_module(options, Path(scratch), notes)
        report["options"]["heavy_module"] = module
        for section in sections:
            if on_section is not None:
                on_section(section)
            measure = {"calls": _calls, "start": _start, "payloads": _payloads,
                       "streams": _streams, "sessions": _sessions, "map": issue18.map_section,
                       "isolation": lambda options, *_: isolation.section(options.quick),
                       "host_tools": lambda options, *_: hosttools.measure(options.seq)
                       }[section]
            report[section] = measure(options, available, module, path)
    report["targets"] = check_targets(report) + issue18.targets(report)
    return report


def _peers(options: argparse.Namespace, notes: list[str]) -> set[str]:
    if options.no_peers:
        notes.append("peers not measured (--no-peers)")
        return set()
    found = {"ProcessPoolExecutor"}
    for name, module in (("pebble", "pebble"), ("trio-parallel", "trio_parallel")):
        if peers.optional(module) is not None:
            found.add(name)
        else:
            notes.append(f"{name} is not installed: skipped (pip install {name})")
    return found


@contextlib.contextmanager
def _quiet_telemetry(keep: bool, notes: list[str]) -> Iterator[None]:
    """Measure snakepit itself: set aside the telemetry listeners plugins installed
    (an exporter costs more per call than the pool does) unless asked to keep them."""
    from snakepit.plugins import plugin_manager

    plugin_manager()
    registry = telemetry.telemetry
    listeners = registry._handlers  # this package's own registry
    if keep or not listeners:
        yield
        return
    notes.append(f"{len(registry.handler_ids())} telemetry listener(s) set aside for the "
                 "run (--keep-telemetry keeps them)")
    registry._handlers = {}
    try:
        yield
    finally:
        registry._handlers = listeners


def _heavy_module(options: argparse.Namespace, scratch: Path,
                  notes: list[str]) -> tuple[str, str]:
    """(module name, directory to add to the path) for the start-up measurement."""
    if options.heavy_module:
        return options.heavy_module, ""
    if not options.quick and peers.optional("numpy") is not None:
        return "numpy", ""
    seconds = 0.01 if options.quick else 0.2
    (scratch / f"{_SYNTHETIC}.py").write_text(_SYNTHETIC_SOURCE.format(seconds=seconds))
    if not options.quick:
        notes.append(f"numpy is not installed: start-up uses a synthetic {seconds} s import")
    return _SYNTHETIC, str(scratch)


def _repeat(options: argparse.Namespace,
            runs: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Run every measurement ``repeat`` times, interleaved, so load changes hit all."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for _ in range(options.repeat):
        for name, run in runs.items():
            results[name].append(run())
    return results


# -- sections --------------------------------------------------------------------------
Run = Callable[[], dict[str, Any]]


def _latency_run(measured: tuple[float, list[float]]) -> dict[str, Any]:
    throughput, samples = measured
    return {"calls_per_s": throughput, "p50_us": statistics.median(samples) * 1e6,
            "p99_us": percentile(samples, 0.99) * 1e6}


def _snakepit_and_raw_calls(workers: int, calls: int, seq: int) -> dict[str, Any]:
    """snakepit's figures, and the raw floor's: its throughput, and latencies taken
    alternately with snakepit's (see :func:`ours.calls`)."""
    throughput, samples, floor, depth, cpu = trio.run(ours.calls, workers, calls, seq)
    return {SNAKEPIT: {**_latency_run((throughput, samples)), "depth": depth,
                       "host_cpu_us": cpu * 1e6},
            RAW: _latency_run((raw.throughput(workers, calls), floor))}


def _executor_calls(make: Callable[[], Any], submit: peers.Submit, calls: int,
                    seq: int) -> dict[str, Any]:
    return _latency_run(peers.executor_calls(make, submit, calls, seq))


def _trio_parallel_calls(workers: int, calls: int, seq: int) -> dict[str, Any]:
    return _latency_run(trio.run(peers.trio_parallel_calls, workers, calls, seq))


def _calls(options: argparse.Namespace, available: set[str], module: str,
           path: str) -> list[dict[str, Any]]:
    workers, calls, seq = options.workers, options.calls, options.seq
    runs: dict[str, Run] = {
        "both": functools.partial(_snakepit_and_raw_calls, workers, calls, seq),
    }
    for name, (make, submit) in peers.executors(workers).items():
        if name in available:
            runs[name] = functools.partial(_executor_calls, make, submit, calls, seq)
    if "trio-parallel" in available:  # a thread and a process hop a call: fewer calls
        runs["trio-parallel"] = functools.partial(_trio_parallel_calls, workers,
                                                  max(64, calls // 4), max(20, seq // 3))
    results = _repeat(options, runs)
    both = results.pop("both")
    results = {SNAKEPIT: [run[SNAKEPIT] for run in both], RAW: [run[RAW] for run in both],
               **results}
    rows = [median_row(name, results[name], ("calls_per_s", "p50_us", "p99_us", "host_cpu_us"))
            for name in results]
    rows[0]["depth"] = min(run["depth"] for run in results[SNAKEPIT])  # the shallowest
    return rows


def _snakepit_start(workers: int, module: str, path: str, warm: bool) -> dict[str, Any]:
    timing = trio.run(functools.partial(ours.start, workers, module, path, warm=warm))
    if not warm:
        return {"seconds": timing["total"]}
    return {"seconds": timing["forked"], "template": timing["template"],
            "total": timing["total"]}


def _executor_start(name: str, workers: int, module: str, path: str) -> dict[str, Any]:
    return {"seconds": peers.executor_start(name, workers, module, path)}


def _trio_parallel_start(workers: int, module: str, path: str) -> dict[str, Any]:
    return {"seconds": trio.run(peers.trio_parallel_start, workers, module, path)}


def _start(options: argparse.Namespace, available: set[str], module: str,
           path: str) -> list[dict[str, Any]]:
    n = options.start_workers
    runs: dict[str, Run] = {
        "snakepit cold": functools.partial(_snakepit_start, n, module, path, False),
        "snakepit warm": functools.partial(_snakepit_start, n, module, path, True),
    }
    for name in ("ProcessPoolExecutor", "pebble"):
        if name in available:
            runs[name] = functools.partial(_executor_start, name, n, module, path)
    if "trio-parallel" in available:
        runs["trio-parallel"] = functools.partial(_trio_parallel_start, n, module, path)
    results = _repeat(options, runs)
    rows = []
    for name, samples in results.items():
        if name != "snakepit warm":
            rows.append(median_row(name, samples, ("seconds",)))
            continue
        for part, key in (("forked", "seconds"), ("template (once)", "template"),
                          ("total", "total")):
            rows.append(median_row(f"snakepit warm: {part}",
                                   [{"seconds": sample[key]} for sample in samples],
                                   ("seconds",)))
    return rows


def _label(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def _snakepit_payload(size: int, rounds: int, out_of_band: bool) -> dict[str, Any]:
    return {"seconds": trio.run(functools.partial(ours.payload, size, rounds,
                                                  out_of_band=out_of_band))}


def _raw_payload(size: int, rounds: int) -> dict[str, Any]:
    return {"seconds": raw.payload_round_trip(size, rounds)}


def _executor_payload(make: Callable[[], Any], submit: peers.Submit, size: int,
                      rounds: int) -> dict[str, Any]:
    return {"seconds": peers.executor_payload(make, submit, size, rounds)}


def _trio_parallel_payload(size: int, rounds: int) -> dict[str, Any]:
    return {"seconds": trio.run(peers.trio_parallel_payload, size, rounds)}


def _payloads(options: argparse.Namespace, available: set[str], module: str,
              path: str) -> list[dict[str, Any]]:
    sizes = ((64 << 10, 3), (1 << 20, 3)) if options.quick else ((1 << 20, 20), (64 << 20, 3))
    rows = []
    for size, rounds in sizes:
        label = _label(size)
        runs: dict[str, Run] = {
            f"snakepit shared memory {label}": functools.partial(_snakepit_payload, size,
                                                                 rounds, True),
            f"snakepit in band {label}": functools.partial(_snakepit_payload, size, rounds,
                                                           False),
            f"{RAW} {label}": functools.partial(_raw_payload, size, rounds),
        }
        for name, (make, submit) in peers.executors(1).items():
            if name in available:
                runs[f"{name} {label}"] = functools.partial(_executor_payload, make, submit,
                                                            size, rounds)
        if "trio-parallel" in available:
            runs[f"trio-parallel {label}"] = functools.partial(_trio_parallel_payload, size,
                                                               rounds)
        runs.update(issue18.payload_runs(size, rounds, label))
        for name, samples in _repeat(options, runs).items():
            seconds = statistics.median(sample["seconds"] for sample in samples)
            rows.append({"name": name, "label": label, "size": size,
                         "round_trip_ms": seconds * 1e3, "mb_per_s": size / seconds / 1e6,
                         "round_trip_ms_samples": [s["seconds"] * 1e3 for s in samples]})
    rows.extend(values.payload_rows(options, functools.partial(_repeat, options)))
    return rows


def _snakepit_stream(chunks: int, size: int) -> dict[str, Any]:
    return trio.run(ours.stream, chunks, size)


def _streams(options: argparse.Namespace, available: set[str], module: str,
             path: str) -> list[dict[str, Any]]:
    cases = ((500, 16), (50, 65_536)) if options.quick else ((20_000, 16), (2_000, 65_536))
    rows = []
    for chunks, size in cases:
        label = f"{size} B"
        runs: dict[str, Run] = {
            f"{SNAKEPIT} {label}": functools.partial(_snakepit_stream, chunks, size),
            f"{RAW} {label}": functools.partial(raw.stream, chunks, size),
        }
        for name, samples in _repeat(options, runs).items():
            row = median_row(name, samples, ("chunks_per_s", "mb_per_s"))
            row["label"] = label
            rows.append(row)
    return rows


def _session_rates(count: int) -> dict[str, Any]:
    return trio.run(ours.session_store, count)


def _sessions(options: argparse.Namespace, available: set[str], module: str,
              path: str) -> list[dict[str, Any]]:
    count = 2_000 if options.quick else 100_000
    runs = _repeat(options, {"store": functools.partial(_session_rates, count)})["store"]
    return [{"name": name, "ops_per_s": statistics.median(run[name] for run in runs),
             "ops_per_s_samples": [run[name] for run in runs]} for name in runs[0]]


if __name__ == "__main__":
    sys.exit(main())
