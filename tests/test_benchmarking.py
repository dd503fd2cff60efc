"""The benchmark runner in quick mode: it must keep working; its figures are not judged."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from snakepit import benchmarking
from snakepit._bench import issue18, mapping, values
from snakepit._bench.report import VALUE_TARGETS

SECTIONS = {"calls", "start", "payloads", "streams", "sessions", "isolation", "map"}


def test_quick_run_prints_the_tables_and_saves_the_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmarking.main(["--quick", "--no-peers", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for heading in ("trivial calls", "workers ready", "echo round trip", "stream",
                    "session store op", "calls after a timeout", "burst of 4",
                    "pipeline depth under the concurrent load", "map: trivial items",
                    "targets (issue 7"):
        assert heading in out

    report = json.loads((tmp_path / "latest.json").read_text())
    assert SECTIONS | {"targets", "notes", "options", "load", "python", "cpus"} <= set(report)
    assert {row["name"] for row in report["calls"]} == {"snakepit", "raw pipe (floor)"}
    for row in report["calls"]:
        assert row["calls_per_s"] > 0 and 0 < row["p50_us"] <= row["p99_us"]
    assert {"snakepit cold", "snakepit warm: forked", "snakepit warm: template (once)",
            "snakepit warm: total"} <= {row["name"] for row in report["start"]}
    assert all(row["seconds"] > 0 for row in report["start"])
    payloads = {row["name"] for row in report["payloads"]}
    for label in ("64 KiB", "1 MiB"):
        assert {f"snakepit shared memory {label}", f"snakepit in band {label}",
                f"raw pipe (floor) {label}"} <= payloads
    assert all(row["round_trip_ms"] > 0 for row in report["payloads"])
    assert len(report["streams"]) == 4 and all(row["chunks_per_s"] > 0
                                               for row in report["streams"])
    assert {row["name"] for row in report["sessions"]} == {
        "create", "get", "touch", "update_metadata", "delete"}
    assert [row["name"] for row in report["host_tools"]] == ["plain", "host_tool"]
    assert all(0 < row["p50_us"] <= row["p99_us"] for row in report["host_tools"])
    assert "call making one host-tool round trip" in out

    isolation = {row["name"]: row for row in report["isolation"]}
    assert 0 <= isolation["calls after a timeout"]["succeeded"] <= 1
    assert isolation["burst after recovery"]["seconds"] > 0
    assert report["calls"][0]["depth"] >= 1

    # framework values beside their references, when pandas and torch are here
    roles = {row.get("role") for row in report["payloads"]}
    absent = set(values.missing())
    if "pandas" not in absent:
        assert {"frame-numeric", "frame-numeric-echo", "frame-mixed",
                "frame-mixed-pickle"} <= roles
    if "torch" not in absent:
        assert {"tensor", "tensor-echo"} <= roles


    assert report["state"] == "idle"
    assert report["calls"][0]["host_cpu_us"] > 0  # the host's CPU per call, recorded
    assert {"warm copy 1 MiB", "snakepit shared memory, views 1 MiB"} <= payloads
    maps = {row["name"]: row for row in report["map"]}
    assert {"snakepit map (auto)", "snakepit map chunksize 1", "snakepit map chunksize 64",
            "snakepit map chunksize 1024", "raw pipe (floor), a frame per item",
            "snakepit map, 10 µs items"} <= set(maps)
    assert all(row["items_per_s"] > 0 for row in maps.values())
    # two workers' ideal: twice the rate the same items run at serially in this process
    assert (maps["snakepit map, 10 µs items"]["ideal_items_per_s"]
            == 2 * maps["10 µs items, serially in one process"]["items_per_s"])


    # every target is judged or skipped, and said so in the output
    assert len(report["targets"]) == 14 + len(VALUE_TARGETS)
    for target in report["targets"]:
        assert target["passed"] in (True, False, None)
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[target["passed"]]
        assert f"{verdict}  {target['name']}" in out
    skipped = [t["name"] for t in report["targets"] if t["passed"] is None]
    # no peers: the throughput ratios and the maps' ratios to the peers' maps; --quick:
    # the framework values' (small values measure per-call costs, not what those
    # targets are about)
    assert len(skipped) == 4 + len(VALUE_TARGETS)
    assert sum("throughput" in name or "at its best chunksize" in name
               for name in skipped) == 4
    assert "peers not measured (--no-peers)" in report["notes"]

    # the history grows by one line a run; the chart comes with matplotlib
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 1
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (tmp_path / "latest.png").exists() == has_matplotlib


def test_one_section_and_no_saving(tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = benchmarking.main(["--quick", "--no-peers", "--only", "sessions", "--no-save",
                              "--output", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "session store op" in out and "trivial calls" not in out
    assert not list(tmp_path.iterdir())


def test_an_unknown_section_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmarking.main(["--only", "calls,warp-drive"]) == 2
    assert "warp-drive" in capsys.readouterr().err


def test_both_machine_states(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from snakepit._bench import machine

    spinning: list[bool] = []
    real_state = machine.state

    def watched(name: str) -> object:
        spinning.append(name == "busy")
        return real_state(name)

    machine.state = watched  # type: ignore[assignment]
    try:
        code = benchmarking.main(["--quick", "--no-peers", "--only", "sessions,map",
                                  "--state", "both", "--output", str(tmp_path)])
    finally:
        machine.state = real_state  # type: ignore[assignment]
    assert code == 0 and spinning == [False, True]
    out = capsys.readouterr().out
    assert "machine state 'idle'" in out and "machine state 'busy'" in out
    idle, busy = out.split("machine state 'busy'")
    # the 10 µs items' ideal needs both CPUs: judged idle, only reported busy
    assert "N/A   pool.map of 10 µs items" not in idle
    assert "N/A   pool.map of 10 µs items" in busy
    states = [json.loads(line)["state"]
              for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert states == ["idle", "busy"]
    assert json.loads((tmp_path / "latest-busy.json").read_text())["state"] == "busy"


def test_busy_state_keeps_a_cpu_spinning() -> None:
    import time

    from snakepit._bench import machine
    from tests.conftest import child_pids

    def cpu_ticks(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    before = child_pids()
    with machine.state("busy"):
        [spinner] = child_pids() - before
        deadline = time.monotonic() + 10
        while cpu_ticks(spinner) < 10 and time.monotonic() < deadline:
            pass  # this process spins too, watching the spinner's CPU time grow
        assert cpu_ticks(spinner) >= 10  # a tenth of a second of CPU: it spins
    assert child_pids() == before  # and it is gone with the block


def test_the_10_us_items_target_is_judged_idle_and_only_reported_busy() -> None:
    rows = [{"name": mapping.WORK_ROW, "items_per_s": 170e3, "ideal_items_per_s": 200e3}]
    for state, passed in (("idle", False), ("busy", None)):
        found = {t["name"]: t for t in issue18.targets({"map": rows, "state": state})}
        target = found["pool.map of 10 µs items within 10% of the workers' ideal rate"]
        assert target["value"] == 0.85 and target["passed"] is passed
        assert ("why" in target) is (state == "busy")
