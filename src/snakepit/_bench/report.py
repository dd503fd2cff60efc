"""Printing, checking against the issue's targets, saving (JSON, history, chart)."""

from __future__ import annotations

import functools
import importlib
import json
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from snakepit._bench.mapping import print_rows as print_map

SNAKEPIT = "snakepit"
RAW = "raw pipe (floor)"


def percentile(samples: list[float], point: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(point * (len(ordered) - 1))))]


def median_row(name: str, runs: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, Any]:
    """One row: the median of each key over the repeated runs, and every sample."""
    row: dict[str, Any] = {"name": name}
    for key in keys:
        values = [run[key] for run in runs if key in run]
        if values:
            row[key] = statistics.median(values)
            row[f"{key}_samples"] = values
    return row


def _ratio(ours: dict[str, Any], other: dict[str, Any], key: str) -> float:
    """ours / other: the median of the ratios of each repetition (whose runs were
    interleaved, so both saw the same load) when both have them, else of the medians."""
    mine, theirs = ours.get(f"{key}_samples"), other.get(f"{key}_samples")
    if mine and theirs and len(mine) == len(theirs):
        return float(statistics.median(a / b for a, b in zip(mine, theirs, strict=True)))
    return float(ours[key] / other[key])


def _at_least(limit: float, value: float) -> bool:
    return value >= limit


def _find(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((row for row in rows if row["name"] == name), None)


# -- targets ---------------------------------------------------------------------------
Target = dict[str, Any]


def targets(report: dict[str, Any]) -> list[Target]:
    """The issue's targets, each PASS/FAIL (or SKIP when its measurement is missing)."""
    found: list[Target] = []

    def check(name: str, value: float | None, limit: float, better: Callable[[float], bool],
              unit: str) -> None:
        found.append({"name": name, "value": value, "limit": limit, "unit": unit,
                      "passed": None if value is None else better(value)})

    rows = report.get("calls", [])
    ours, raw = _find(rows, SNAKEPIT), _find(rows, RAW)
    for peer, factor in (("ProcessPoolExecutor", 2.0), ("trio-parallel", 3.0)):
        other = _find(rows, peer)
        ratio = _ratio(ours, other, "calls_per_s") if ours and other else None
        check(f"trivial-call throughput >= {factor:g}x {peer}", ratio, factor,
              functools.partial(_at_least, factor), "x")
    ratio = _ratio(ours, raw, "p50_us") if ours and raw else None
    check("per-call overhead (sequential p50) within 3x of the raw pipe", ratio, 3.0,
          lambda value: value <= 3.0, "x")
    check(f"p99 < 2 ms with {report['options']['workers']} workers",
          ours["p99_us"] / 1000 if ours else None, 2.0, lambda value: value < 2.0, "ms")
    cold = _find(report.get("start", []), "snakepit cold")
    warm = _find(report.get("start", []), "snakepit warm: forked")
    check("warm start (forked workers) >= 10x faster than cold",
          cold["seconds"] / warm["seconds"] if cold and warm else None, 10.0,
          lambda value: value >= 10.0, "x")
    after = _find(report.get("isolation", []), "calls after a timeout")
    check("the call after a timeout succeeds (share of rounds)",
          after["succeeded"] if after else None, 1.0, lambda value: value >= 1.0, "")
    burst = _find(report.get("isolation", []), "burst after recovery")
    check("a burst after recovery spreads: under 60% of the serial time",
          burst["seconds"] / burst["serial_seconds"] if burst else None, 0.6,
          lambda value: value < 0.6, "x")
    sessions = report.get("sessions", [])
    check("session store >= 100k ops/s (slowest operation)",
          min(row["ops_per_s"] for row in sessions) if sessions else None, 100_000,
          lambda value: value >= 100_000, "ops/s")
    return found + value_targets(report)


#: (name, role measured, role of its reference, the largest ratio that passes)
VALUE_TARGETS = (
    ("pandas numeric columns within 2x of a shared-memory copy of their bytes",
     "frame-numeric", "frame-numeric-echo", 2.0),
    ("string-heavy frame no slower than pickle (dumps+loads, twice)",
     "frame-mixed", "frame-mixed-pickle", 1.0),
    ("tensor round trip within 1.5x of an echo of its bytes", "tensor", "tensor-echo", 1.5),
)


def value_targets(report: dict[str, Any]) -> list[Target]:
    """Issue 19's targets for framework values (the payload rows with a ``role``): a
    ratio of round-trip times to the reference's, PASS at or below the limit; SKIP
    without pandas or torch, and with ``--quick``, whose small values measure per-call
    costs rather than what the targets are about."""
    rows = {row["role"]: row for row in report.get("payloads", []) if "role" in row}
    quick = report.get("options", {}).get("quick", False)
    found: list[Target] = []
    for name, role, reference, limit in VALUE_TARGETS:
        ours, other = rows.get(role), rows.get(reference)
        value = _ratio(ours, other, "round_trip_ms") if ours and other and not quick else (
            None)
        found.append({"name": name, "value": value, "limit": limit, "unit": "x",
                      "passed": None if value is None else value <= limit})
    return found


# -- printing --------------------------------------------------------------------------
def print_report(report: dict[str, Any], out: Callable[[str], None] = print) -> None:
    options = report["options"]
    out(f"\nsnakepit benchmarks: {options['workers']} workers, Python {report['python']}, "
        f"{report['cpus']} CPUs, load average {report['load'][0]:.2f} at start, "
        f"medians of {options['repeat']} run(s)\n")
    rows = report.get("calls", [])
    if rows:
        ours = _find(rows, SNAKEPIT)
        out(f"{'trivial calls':<24}{'calls/s':>10}{'p50 µs':>9}{'p99 µs':>9}"
            f"{'snakepit is x faster':>22}{'p50 vs snakepit':>17}")
        for row in rows:  # ratios: the median of each repetition's, as the targets
            speed = _ratio(ours, row, "calls_per_s") if ours else float("nan")
            p50 = _ratio(row, ours, "p50_us") if ours else float("nan")
            out(f"{row['name']:<24}{row['calls_per_s']:>10,.0f}{row['p50_us']:>9.0f}"
                f"{row['p99_us']:>9.0f}{speed:>21.2f}x{p50:>16.2f}x")
        if ours is not None and "depth" in ours:
            out(f"snakepit's pipeline depth under the concurrent load: {ours['depth']} "
                "(the shallowest of the runs)")
    starts = report.get("start", [])
    if starts:
        out(f"\n{options['start_workers']} workers ready, each importing "
            f"{options['heavy_module']!r}")
        cold = _find(starts, "snakepit cold")
        for row in starts:
            ratio = f"{cold['seconds'] / row['seconds']:>8.1f}x" if cold else ""
            out(f"  {row['name']:<38}{row['seconds']:>9.3f} s{ratio}")
    payloads = report.get("payloads", [])
    if payloads:
        out(f"\n{'echo round trip':<36}{'size':>8}{'ms':>10}{'MB/s':>9}{'vs in band':>12}")
        for row in payloads:
            band = _find(payloads, f"snakepit in band {row['label']}")
            gain = (f"{band['round_trip_ms'] / row['round_trip_ms']:>11.2f}x"
                    if band else "")
            out(f"{row['name']:<36}{row['label']:>8}{row['round_trip_ms']:>10.2f}"
                f"{row['mb_per_s']:>9,.0f}{gain}")
    streams = report.get("streams", [])
    if streams:
        out(f"\n{'stream':<32}{'chunks/s':>11}{'MB/s':>9}{'vs floor':>10}")
        for row in streams:
            floor = _find(streams, f"{RAW} {row['label']}")
            share = f"{row['chunks_per_s'] / floor['chunks_per_s']:>9.0%}" if floor else ""
            out(f"{row['name']:<32}{row['chunks_per_s']:>11,.0f}{row['mb_per_s']:>9.1f}"
                f"{share}")
    isolated = report.get("isolation", [])
    if isolated:
        after, burst = _find(isolated, "calls after a timeout"), _find(isolated,
                                                                      "burst after recovery")
        if after:
            out(f"\ncalls after a timeout: {after['succeeded']:.0%} succeeded, "
                f"{after['next_call_ms']:.0f} ms each (a replacement's start included)")
        if burst:
            out(f"burst of 4 x {burst['serial_seconds'] / 4:.1f} s calls after 3 of 4 "
                f"workers died: {burst['seconds']:.2f} s (one worker alone: "
                f"{burst['serial_seconds']:.1f} s); pipeline depth before: {burst['depth']}")
    tools = report.get("host_tools", [])
    if tools:
        out(f"\n{'sequential call':<36}{'p50 µs':>9}{'p99 µs':>9}")
        for row in tools:
            label = {"plain": "plain call (echo)",
                     "host_tool": "call making one host-tool round trip"}.get(row["name"],
                                                                             row["name"])
            out(f"  {label:<34}{row['p50_us']:>9.0f}{row['p99_us']:>9.0f}")
    sessions = report.get("sessions", [])
    if sessions:
        out(f"\n{'session store op':<24}{'ops/s':>12}")
        for row in sessions:
            out(f"  {row['name']:<22}{row['ops_per_s']:>12,.0f}")
    if report.get("map"):
        print_map(report["map"], out)
    out(f"\ntargets (issue 7, and issue 18), machine state {report.get('state', 'idle')!r}, "
        "as ratios within this run (median of the per-run ratios):")
    for target in report["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[target["passed"]]
        value = ("not measured" if target["value"] is None
                 else f"{target['value']:,.2f}{target['unit']}")
        if target.get("why"):
            verdict, value = "N/A ", f"{value} ({target['why']})"
        out(f"  {verdict}  {target['name']}: {value}")
    for note in report["notes"]:
        out(f"note: {note}")


# -- saving ----------------------------------------------------------------------------
def save(report: dict[str, Any], directory: Path) -> list[Path]:
    """latest.json, one line appended to history.jsonl, and latest.png (with matplotlib)."""
    directory.mkdir(parents=True, exist_ok=True)
    latest = directory / "latest.json"
    latest.write_text(json.dumps(report, indent=2))
    history = directory / "history.jsonl"
    with history.open("a") as file:
        file.write(json.dumps(report) + "\n")
    written = [latest, history]
    if chart(report, history, directory / "latest.png"):
        written.append(directory / "latest.png")
    return written


def chart(report: dict[str, Any], history: Path, path: Path) -> bool:
    """Throughput of each pool now, and snakepit's (with its ratio to ProcessPoolExecutor)
    over past runs; False when matplotlib is not installed or the run measured no calls
    (``--only`` other sections): there is nothing to draw."""
    if not report.get("calls"):
        return False
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    rows = report.get("calls", [])
    past = []
    for line in history.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        ours = _find(entry.get("calls", []), SNAKEPIT)
        ppe = _find(entry.get("calls", []), "ProcessPoolExecutor")
        if ours:
            past.append((ours["calls_per_s"],
                         _ratio(ours, ppe, "calls_per_s") if ppe else None))
    figure, (now, trend) = plt.subplots(1, 2, figsize=(11, 3.2))
    names = [row["name"] for row in rows]
    now.barh(names, [row["calls_per_s"] for row in rows],
             color=["#2a7" if name == SNAKEPIT else "#999" for name in names])
    now.invert_yaxis()
    now.set_xscale("log")  # the raw floor is an order of magnitude above the pools
    now.set_xlabel("trivial calls per second (log scale)")
    now.set_title(f"{report['options']['workers']} workers, {report['cpus']} CPUs, "
                  f"Python {report['python']}")
    trend.plot(range(1, len(past) + 1), [rate for rate, _ in past], marker="o",
               color="#2a7", label="snakepit calls/s")
    trend.set_xlabel("run (history.jsonl)")
    trend.set_ylabel("calls/s")
    trend.set_title("snakepit over time")
    trend.xaxis.get_major_locator().set_params(integer=True)
    ratios = [(i + 1, ratio) for i, (_, ratio) in enumerate(past) if ratio is not None]
    if ratios:
        twin = trend.twinx()
        twin.plot([i for i, _ in ratios], [r for _, r in ratios], marker=".", color="#c63",
                  label="x ProcessPoolExecutor (target 2)")
        twin.axhline(2.0, color="#c63", linestyle=":", linewidth=1)
        twin.set_ylim(bottom=0)
        twin.set_ylabel("x ProcessPoolExecutor")
        twin.legend(loc="lower right", fontsize="small")
    trend.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
