"""The ``snakepit`` command, run as a user runs it: demo, operator views, doctor."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from rich.console import Console

import snakepit
from snakepit.cli.progress import worker_progress
from snakepit.cli.view import watch
from snakepit.control.client import find_run, run_snapshot
from tests.conftest import chaos_config, is_alive

SNAKEPIT = [sys.executable, "-m", "snakepit"]
ANSI = re.compile(rb"\x1b\[[0-9;?]*[a-zA-Z]")


def test_demo_runs_and_leaves_no_process_behind() -> None:
    result = subprocess.run([*SNAKEPIT, "demo", "--calls", "300"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "300 results, all correct" in out
    assert out.count("WorkerTimeout: ") == 2
    assert "WorkerCrashed: " in out and "RemoteError: " in out
    assert "the pool still answers: ping -> " in out
    # the totals line, whatever the machine's load did to the timing of the story
    totals = re.search(r"(\d+) timeouts, (\d+) crashes.*restarts (\d+)$", out, re.MULTILINE)
    assert totals is not None, out
    timeouts, crashes, restarts = map(int, totals.groups())
    assert timeouts == 2 and crashes == 1
    assert restarts >= 2  # the stubborn sleeper's worker and the crashed one
    assert "every worker process has exited" in out
    first_line = out.splitlines()[0]
    pids = [int(p) for p in first_line.split("pids ")[1].rstrip(")").split(", ")]
    assert len(pids) == 4
    assert not any(is_alive(pid) for pid in pids)


def test_version_help_and_usage_errors() -> None:
    result = subprocess.run([*SNAKEPIT, "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == snakepit.__version__
    commands = ["demo", "bench", "cleanup", "plugins", "ls", "stats", "top", "recycle",
                "drain", "resume", "doctor"]
    for command in commands:
        helped = subprocess.run([*SNAKEPIT, command, "--help"], capture_output=True,
                                text=True, timeout=60)
        assert helped.returncode == 0
        assert "usage: snakepit " + command in helped.stdout.lower()
    wrong = subprocess.run([*SNAKEPIT, "demo", "--workers", "0"], capture_output=True,
                           text=True, timeout=60)
    assert wrong.returncode == 2 and "--workers" in wrong.stderr


@pytest.fixture
def state_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="sp-"))  # short: Unix socket paths are short
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def snakepit_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the command in another process, as an operator would."""
    return await trio.run_process([*SNAKEPIT, *args], capture_stdout=True,
                                  capture_stderr=True, check=False)


async def test_another_process_sees_the_pool_and_recycles_a_worker(state_dir: Path) -> None:
    config = snakepit.SnakepitConfig(pools={
        "general": chaos_config(name="general", size=2, state_dir=str(state_dir)),
        "optimizer": chaos_config(name="optimizer", size=1, state_dir=str(state_dir))})
    async with snakepit.open_pools(config) as pools:
        for i in range(6):
            await pools["general"].execute("echo", i)
        listed = await snakepit_cli("ls", "--json", "--state-dir", str(state_dir))
        assert listed.returncode == 0, listed.stderr
        (run,) = json.loads(listed.stdout)
        assert run["host_pid"] == os.getpid() and run["pools"] == ["general", "optimizer"]
        assert run["workers"] == 3

        shown = await snakepit_cli("stats", "--json", "--state-dir", str(state_dir))
        assert shown.returncode == 0, shown.stderr
        snapshot = json.loads(shown.stdout)
        general = snapshot["pools"]["general"]
        assert general["succeeded"] == 6 and len(general["workers"]) == 2
        assert [w["pid"] for w in general["workers"]] == [
            w.pid for w in pools["general"].stats().workers]
        assert any(e["event"] == "pool.started" for e in snapshot["events"])

        old = pools["general"].stats().workers[1].pid
        recycled = await snakepit_cli("recycle", "general-1", "--state-dir", str(state_dir))
        assert recycled.returncode == 0, recycled.stderr
        new = pools["general"].stats().workers[1].pid
        assert new != old and f"pid {old}" in recycled.stdout.decode()
        assert f"pid {new}" in recycled.stdout.decode()

        drained = await snakepit_cli("drain", "optimizer", "--state-dir", str(state_dir))
        assert drained.returncode == 0, drained.stderr
        with pytest.raises(snakepit.PoolDraining):
            await pools["optimizer"].execute("echo", 1)
        resumed = await snakepit_cli("resume", "optimizer", "--state-dir", str(state_dir))
        assert resumed.returncode == 0 and await pools["optimizer"].execute("echo", 1) == 1

        bad = await snakepit_cli("recycle", "general-7", "--state-dir", str(state_dir))
        assert bad.returncode == 1 and b"no worker 'general-7'" in bad.stderr
    gone = await snakepit_cli("stats", "--state-dir", str(state_dir))
    assert gone.returncode == 3 and b"no running instance" in gone.stderr


def test_bench_runs_a_section_from_the_command_line(state_dir: Path) -> None:
    result = subprocess.run([*SNAKEPIT, "bench", "--quick", "--no-peers", "--only",
                             "sessions", "--output", str(state_dir)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "session store op" in result.stdout
    assert json.loads((state_dir / "latest.json").read_text())["sessions"]
    assert not (state_dir / "latest.png").exists()  # no calls measured: nothing to chart


def test_ls_ignores_dead_runs(state_dir: Path) -> None:
    runs = state_dir / "runs"
    runs.mkdir()
    (runs / "1-1.json").write_text(json.dumps({  # pid 1 never started at tick 1
        "run_id": "1-1", "host_pid": 1, "host_start": 1, "workers": [],
        "endpoints": [{"socket": "/nowhere.sock", "pools": [{"name": "x", "size": 1}]}]}))
    result = subprocess.run([*SNAKEPIT, "ls", "--state-dir", str(state_dir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "no running snakepit instances" in result.stdout


async def test_top_renders_a_frame_of_a_live_pool(state_dir: Path) -> None:
    config = chaos_config(name="viewed", state_dir=str(state_dir))
    async with snakepit.open_pool(config) as pool:
        for i in range(20):
            await pool.execute("echo", i)
        console = Console(record=True, width=160, file=io.StringIO(), force_terminal=True)
        run = find_run(state_dir, None)
        why = await trio.to_thread.run_sync(
            lambda: watch(lambda: run_snapshot(run), console, frames=1))
        pids = [str(w.pid) for w in pool.stats().workers]
    assert why == "done"
    frame = console.export_text()
    assert f"run {run.run_id}" in frame and "pool viewed" in frame
    assert "viewed-0" in frame and "viewed-1" in frame and all(pid in frame for pid in pids)
    assert "calls 20 (20 ok, 0 failed)" in frame
    assert "latest events" in frame and "worker.ready" in frame


async def test_top_leaves_when_the_instance_goes_away(state_dir: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=True)
    shown = threading.Event()
    outcome: dict[str, str] = {}

    async def run_top(fetch: Any) -> None:
        outcome["why"] = await trio.to_thread.run_sync(
            lambda: watch(fetch, console, interval=0.05))

    async with trio.open_nursery() as nursery:
        async with snakepit.open_pool(chaos_config(state_dir=str(state_dir))):
            run = find_run(state_dir, None)

            def fetch() -> dict[str, Any]:
                snapshot = run_snapshot(run)
                shown.set()
                return snapshot

            nursery.start_soon(run_top, fetch)
            await trio.to_thread.run_sync(shown.wait)
        # the pool closed; top notices at its next refresh and returns
    assert outcome["why"] == "gone"


def test_top_in_a_terminal_exits_cleanly_on_ctrl_c(state_dir: Path) -> None:
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, str(state_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None and host.stdout.readline().strip() == "ready"
        main, terminal = pty.openpty()
        top = subprocess.Popen([*SNAKEPIT, "top", "--state-dir", str(state_dir),
                                "--interval", "0.2"], stdin=terminal, stdout=terminal,
                               stderr=terminal, env={**os.environ, "COLUMNS": "150"})
        os.close(terminal)
        seen = b""
        deadline = time.monotonic() + 60
        while b"viewed-0" not in ANSI.sub(b"", seen):  # the first frame is on the screen
            assert time.monotonic() < deadline, seen
            if select.select([main], [], [], 1.0)[0]:
                seen += os.read(main, 65536)
        top.send_signal(signal.SIGINT)
        assert top.wait(timeout=30) == 0
        os.close(main)
    finally:
        host.terminate()
        host.wait(timeout=30)


HOST = """
import sys, trio, snakepit
async def main():
    config = snakepit.PoolConfig(name="viewed", size=1, state_dir=sys.argv[1])
    async with snakepit.open_pool(config):
        print("ready", flush=True)
        await trio.sleep_forever()
trio.run(main)
"""


async def test_progress_bar_follows_workers_coming_up() -> None:
    console = Console(file=io.StringIO(), force_terminal=True)
    with worker_progress(console, 3) as progress:
        async with snakepit.open_pool(chaos_config(size=3)):
            task = progress.tasks[0]
            assert task.completed == 3 and task.finished


def write_config(directory: Path, text: str) -> Path:
    path = directory / "snakepit.toml"
    path.write_text(text)
    return path


def doctor_failures(config: Path, **env: str) -> dict[str, Any]:
    """Run ``snakepit doctor CONFIG --json``, which must fail; its failures by pool."""
    result = subprocess.run([*SNAKEPIT, "doctor", str(config), "--json"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, **env})
    assert result.returncode == 1, result.stdout + result.stderr
    return {f["scope"]: f for f in json.loads(result.stdout) if f["status"] == "fail"}


def test_doctor_passes_a_healthy_config(state_dir: Path) -> None:
    config = write_config(state_dir, f"""
[pools.general]
size = 2
state_dir = "{state_dir}"
""")
    result = subprocess.run([*SNAKEPIT, "doctor", str(config), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    findings = json.loads(result.stdout)
    checks = {(f["scope"], f["check"]): f["status"] for f in findings}
    assert checks[("general", "worker handshake")] == "pass"
    assert checks[("general", "adapter")] == "pass"
    assert checks[("machine", f"state directory {state_dir}")] == "pass"
    assert ("machine", "pipe buffer size") in checks
    assert ("machine", "process/thread limit (ulimit -u)") in checks


def test_doctor_reports_a_broken_config_with_the_fix(state_dir: Path) -> None:
    config = write_config(state_dir, f"""
[pools.missing_python]
python = "/nonexistent/bin/python3"
state_dir = "{state_dir}"

[pools.bad_handler]
handler = "no_such_module_anywhere:Handler"
state_dir = "{state_dir}"

[pools.unknown_adapter]
adapter = "cobol"
state_dir = "{state_dir}"
""")
    failed = doctor_failures(config)
    assert failed["missing_python"]["check"] == "executable"
    assert "/nonexistent/bin/python3" in failed["missing_python"]["detail"]
    assert failed["bad_handler"]["check"] == "worker handshake"
    assert "no_such_module_anywhere" in failed["bad_handler"]["detail"]
    assert "make handler 'no_such_module_anywhere:Handler' importable" in (
        failed["bad_handler"]["fix"])
    assert failed["unknown_adapter"]["check"] == "adapter"
    assert "snakepit plugins" in failed["unknown_adapter"]["fix"]
    table = subprocess.run([*SNAKEPIT, "doctor", str(config)], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert table.returncode == 1 and "some checks failed" in table.stdout


def test_doctor_reports_a_missing_runtime_and_a_missing_gpu(state_dir: Path) -> None:
    config = write_config(state_dir, f"""
[pools.js]
adapter = "node"
state_dir = "{state_dir}"

[pools.neural]
kind = "gpu"
state_dir = "{state_dir}"
""")
    # a PATH with neither node nor nvidia-smi (workers run sys.executable by its path)
    failed = doctor_failures(config, PATH=str(state_dir))
    assert failed["js"]["check"] == "executable" and "node" in failed["js"]["detail"]
    assert "pools.js.options.node" in failed["js"]["fix"]
    assert "GPU" in failed["neural"]["detail"]
    assert "pools.neural.options.fallback_cpu = true" in failed["neural"]["fix"]


def test_doctor_names_every_config_error(state_dir: Path) -> None:
    config = write_config(state_dir, """
[pools.general]
size = 0
startup_timeout = -1
""")
    result = subprocess.run([*SNAKEPIT, "doctor", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "pools.general.size" in result.stderr
    assert "pools.general.startup_timeout" in result.stderr


def test_shell_completion_offers_running_instances(state_dir: Path) -> None:
    script = subprocess.run([*SNAKEPIT], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "_SNAKEPIT_COMPLETE": "bash_source"})
    assert "_SNAKEPIT_COMPLETE=bash_complete" in script.stdout
    host = subprocess.Popen([sys.executable, "-c", HOST, str(state_dir)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None and host.stdout.readline().strip() == "ready"
        completed = subprocess.run(
            [*SNAKEPIT], capture_output=True, text=True, timeout=60,
            env={**os.environ, "_SNAKEPIT_COMPLETE": "bash_complete",
                 "COMP_WORDS": f"snakepit top --state-dir {state_dir} ", "COMP_CWORD": "4"})
        assert f"{host.pid}-" in completed.stdout
    finally:
        host.terminate()
        host.wait(timeout=30)
